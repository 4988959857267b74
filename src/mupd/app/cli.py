"""``mupd serve --model DIR [--host 127.0.0.1] [--port 8000]``: the local web page."""

from __future__ import annotations

import sys

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def register(subparsers) -> None:
    from ..settings import add_threads_argument

    p = subparsers.add_parser("serve", help="a local web page: generate, stain/translate/vary, compare (mupd[app])")
    p.add_argument("--model", required=True, help="pipeline folder (model_index.json, model/, vae/, ...)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; another address exposes the page)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: settings / MUPD_DEVICE)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload in MB (default 20)")
    p.add_argument("--max-pixels", type=int, default=2048 * 2048, help="largest uploaded image in pixels (default 2048x2048)")
    add_threads_argument(p)
    p.set_defaults(func=run_serve)


def run_serve(args) -> int:
    from ..errors import MupdError, missing_extra, require
    from ..pipelines import preflight

    require(1 <= args.port <= 65535, f"--port must be in 1..65535, got {args.port}")
    require(args.max_upload_mb > 0 and args.max_pixels > 0, "--max-upload-mb and --max-pixels must be positive")
    preflight.model_facts(args.model)  # a wrong folder is reported before torch loads
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise missing_extra(exc.name or "fastapi", "app", "mupd serve") from None
    if args.host not in LOCAL_HOSTS:
        print(f"mupd serve: binding to {args.host}: other machines can reach this page (and use this device)",
              file=sys.stderr)
    from ..pipelines import Pipeline
    from .server import create_app
    from .uploads import Limits

    pipe = Pipeline.from_pretrained(args.model, device=args.device)
    app = create_app(pipe, Limits(max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels))
    print(f"mupd serve: {args.model} on http://{args.host}:{args.port}/ (Ctrl+C stops)", file=sys.stderr)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    except OSError as exc:
        raise MupdError(f"cannot listen on {args.host}:{args.port} ({exc.strerror}); choose another --port") from None
    return 0
