"""The FastAPI app: the page, its status line, checked uploads -> queued jobs, results as PNGs.

    from mupd.pipelines import Pipeline
    from mupd.app.server import create_app
    app = create_app(Pipeline.from_pretrained("mupd-demo/checkpoint"))   # serve with uvicorn

No route takes a server path: uploads are read from the request, results are served from memory.
"""


import io
import json
import zipfile
from contextlib import contextmanager

from ..errors import MupdError, require
from .jobs import JobQueue
from .page import PAGE
from .script import SCRIPT
from .tasks import generate_request, image_methods, image_request, streams
from .uploads import Limits, parse_gene_values, read_image, read_rna_upload, rna_rows, safe_name


def status(pipe, limits: Limits) -> dict:
    """The status line: device, model, licences (model and encoders), streams and limits."""
    from .. import __version__

    encoders = {}
    for modality, entry in (pipe.index.get("encoders") or {}).items():
        facts = entry.get("licence") or {}
        encoders[modality] = {"name": entry.get("name"), "licence": facts.get("licence", "unknown"),
                              "commercial": _answer(facts.get("commercial"))}
    recorded = (pipe.index.get("licence") or {}).get("commercial")
    order = ["yes", "check", "no"]  # a folder without the overall answer: the strictest of its encoders
    commercial = _answer(recorded) if recorded is not None else max(
        (e["commercial"] for e in encoders.values()), key=order.index, default="check")
    name = pipe.path.name if pipe.path else "model"
    if name in ("checkpoint", "pipeline") and pipe.path is not None:  # e.g. mupd-demo/checkpoint
        name = f"{pipe.path.parent.name}/{name}"
    return {"model": name, "task": pipe.task, "device": str(pipe.device), "mupd_version": __version__,
            "modalities": list(pipe.modalities), "streams": streams(pipe), "labels": pipe.labels,
            "image_size": pipe.image_size, "methods": image_methods(pipe),
            "licence": {"commercial": commercial, "model": pipe.index.get("model_licence", "not stated"),
                        "encoders": encoders},
            "limits": {"max_upload_mb": limits.max_upload_mb, "max_pixels": limits.max_pixels,
                       "max_n": limits.max_n, "max_steps": limits.max_steps}}


def _answer(value) -> str:
    """A commercial-use answer as yes / no / check (older folders stored booleans)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return value if value in ("yes", "no", "check") else "check"


async def _form(request) -> tuple[dict, dict]:
    """(text fields, {field: (safe file name, bytes)}) of a multipart form; empty file inputs dropped."""
    form = await request.form()
    fields, files = {}, {}
    for key, value in form.multi_items():
        if hasattr(value, "read"):
            data = await value.read()
            if data or value.filename:
                files[key] = (safe_name(value.filename), data)
        else:
            fields[key] = str(value)
    return fields, files


def create_app(pipe, limits: Limits | None = None, jobs: JobQueue | None = None):
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.concurrency import run_in_threadpool

    limits = limits or Limits()
    jobs = jobs or JobQueue()
    app = FastAPI(title="mupd serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.jobs, app.state.limits = jobs, limits
    info = status(pipe, limits)

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        if request.method == "POST":
            length = request.headers.get("content-length")
            if length is None or not length.isdigit():
                return JSONResponse({"error": "uploads need a Content-Length header"}, status_code=411)
            if int(length) > limits.max_bytes + 64 * 1024:  # form boundaries and fields
                return JSONResponse({"error": f"the upload is {int(length) / 2**20:.1f} MB; uploads are limited "
                                              f"to {limits.max_upload_mb:g} MB (start the server with "
                                              "--max-upload-mb to change it)"}, status_code=413)
        return await call_next(request)

    @app.exception_handler(MupdError)
    async def user_error(request: Request, exc: MupdError):
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.get("/", response_class=HTMLResponse)
    def page():
        return PAGE

    @app.get("/app.js")
    def script():
        return Response(SCRIPT, media_type="text/javascript")

    @app.get("/api/status")
    def get_status():
        return {**info, "queue": jobs.snapshot()}

    @app.post("/api/rna/rows")
    async def post_rna_rows(request: Request):
        _, files = await _form(request)
        require("rna" in files, "no RNA file was sent")
        name, data = files["rna"]
        return {"rows": await run_in_threadpool(rna_rows, data, name, limits)}

    @app.post("/api/generate")
    async def post_generate(request: Request):
        fields, files = await _form(request)

        def check():
            rna = None
            if "rna" in files:
                rna = read_rna_upload(files["rna"][1], files["rna"][0], fields.get("rna_row"), limits)
            elif (fields.get("genes") or "").strip():
                rna = parse_gene_values(fields["genes"])
            ref = read_image(files["ref"][1], files["ref"][0], limits) if "ref" in files else None
            return generate_request(pipe, fields, limits, rna=rna, ref=ref)

        run = await run_in_threadpool(check)
        return {"job": jobs.submit("generate", run).id}

    @app.post("/api/image")
    async def post_image(request: Request):
        fields, files = await _form(request)
        require("image" in files, "choose a source image to upload first")

        def check():
            return image_request(pipe, fields, limits, read_image(files["image"][1], files["image"][0], limits))

        run = await run_in_threadpool(check)
        return {"job": jobs.submit(str(fields.get("method", "image")).split(":")[0], run).id}

    _add_job_routes(app, jobs)
    return app


def _add_job_routes(app, jobs: JobQueue) -> None:
    """Polling a job, and its results as PNGs (metadata kept) or one zip."""
    from fastapi.responses import JSONResponse, Response

    @app.get("/api/jobs/{job_id}")
    def get_job(job_id: str):
        job = jobs.get(job_id)
        if job is None:
            return JSONResponse({"error": f"no job {job_id} (finished jobs are kept for a while only)"}, 404)
        images = [{"url": f"/api/jobs/{job.id}/{k}.png", "width": im["width"], "height": im["height"],
                   "params": im["params"]} for k, im in enumerate(job.result.get("images", []))]
        return {"id": job.id, "kind": job.kind, "state": job.state, "position": jobs.position(job),
                "done": job.done, "total": job.total, "error": job.error, "images": images,
                "notes": job.result.get("notes", []),
                "seconds": round((job.finished or 0) - (job.started or 0), 2) if job.finished else None}

    @app.get("/api/jobs/{job_id}/{index}.png")
    def get_png(job_id: str, index: int):
        job = jobs.get(job_id)
        images = job.result.get("images", []) if job else []
        if not 0 <= index < len(images):
            return JSONResponse({"error": "no such image"}, 404)
        name = f"mupd-{job_id}-{index}.png"
        return Response(images[index]["png"], media_type="image/png",
                        headers={"Content-Disposition": f'inline; filename="{name}"'})

    @app.get("/api/zip/{job_id}")
    def get_zip(job_id: str):
        job = jobs.get(job_id)
        if job is None or job.state != "done":
            return JSONResponse({"error": "no finished job with that id"}, 404)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for k, im in enumerate(job.result["images"]):
                archive.writestr(f"mupd-{job_id}-{k}.png", im["png"])
            archive.writestr("parameters.json", json.dumps([im["params"] for im in job.result["images"]], indent=1))
        return Response(buffer.getvalue(), media_type="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="mupd-{job_id}.zip"'})


@contextmanager
def serving(app, host: str = "127.0.0.1", port: int = 0):
    """Run ``app`` with uvicorn in a background thread (tests, benchmarks, notebooks); yields the base
    URL and stops the server (and its job worker) on exit. ``port=0`` picks a free port."""
    import socket
    import threading
    import time

    import uvicorn

    if port == 0:
        with socket.socket() as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="mupd-serve", daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        require(thread.is_alive() and time.time() < deadline, f"the server did not start on {host}:{port}")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        app.state.jobs.close()
