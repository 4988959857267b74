"""What the page can ask a loaded pipeline for: checked requests -> job functions.

Each ``*_request`` checks a form's fields against the model and the limits (raising ``MupdError``
before anything is queued) and returns the function the worker runs; that function calls the
pipeline API (``pipe(...)``, ``pipe.vary/stain/translate``) and returns PNGs with their ``mupd:*``
parameters in tEXt chunks, exactly as ``PipelineOutput.save`` writes them.
"""

from __future__ import annotations

import io
from typing import Any, Callable

from ..errors import MupdError, require
from ..pipelines.options import SAMPLERS, check_mode_options, check_sampler
from ..pipelines.pngmeta import png_info
from .jobs import Job, tile_progress
from .uploads import Limits, check_genes

MODALITIES = ("text", "rna", "image")


def streams(pipe) -> dict[str, bool]:
    """Which condition streams the page may offer (the model has it and something encodes it)."""
    vector = "rna" in (getattr(pipe.config, "vector_modalities", None) or {})
    out = {}
    for m in MODALITIES:
        usable = m in pipe.modalities and (m in pipe.encoders or (m == "rna" and vector))
        out[m] = bool(usable and (m != "rna" or pipe.vocabulary is not None))
    return out


def image_methods(pipe) -> list[str]:
    """Image-to-image methods of this folder: ``task:method``."""
    if pipe.source_channels > 0:
        task = "translate" if pipe.task == "translate" else "stain"
        return [f"{task}:readout", f"{task}:sample"]
    return ["vary:sdedit", "translate:sdedit"]


def png_bytes(image, params: dict) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=png_info(params))
    return buffer.getvalue()


def packaged(out) -> dict:
    images = [{"png": png_bytes(out.pil(i), out.parameters[i]), "width": out.pil(i).width,
               "height": out.pil(i).height, "params": out.parameters[i]} for i in range(len(out))]
    return {"images": images, "notes": list(out.notes or [])}


def _int(form: dict, key: str, default: int, low: int, high: int) -> int:
    return int(_number(form, key, default, low, high, int, "a whole number"))


def _float(form: dict, key: str, default: float, low: float, high: float) -> float:
    return _number(form, key, default, low, high, float, "a number")


def _number(form: dict, key: str, default, low, high, kind, what: str):
    """A form field as ``kind`` within [low, high]; an empty field takes ``default``."""
    raw = str(form.get(key) if form.get(key) not in (None, "") else default).strip()
    try:
        value = kind(raw)
    except ValueError:
        raise MupdError(f"{key} must be {what}, got {raw!r}") from None
    require(low <= value <= high, f"{key} must be between {low:g} and {high:g}, got {value:g}")
    return value


def sampling_options(form: dict, limits: Limits) -> dict:
    sampler = str(form.get("sampler") or "heun")
    require(sampler in SAMPLERS, f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    steps = _int(form, "steps", 20, 1, limits.max_steps)
    check_sampler(sampler, steps)
    return {"sampler": sampler, "steps": steps, "seed": _int(form, "seed", 0, 0, 2**31 - 1)}


def per_modality(form: dict, prefix: str, given: set[str], default: float, high: float) -> dict:
    """``guidance_text``-style fields -> {modality: value}, only for conditions actually given."""
    return {m: _float(form, f"{prefix}_{m}", default, 0.0, high) for m in MODALITIES
            if m in given and form.get(f"{prefix}_{m}") not in (None, "")}


def generate_request(pipe, form: dict, limits: Limits, *, rna=None, ref=None) -> Callable[[Job], dict]:
    """Checked generate parameters -> the job. ``rna``: an RnaProfile; ``ref``: a PIL image."""
    require(pipe.source_channels == 0,
            f"this is a '{pipe.task}' model: it needs a source image; use the Stain / translate tab")
    has = streams(pipe)
    text = (form.get("text") or "").strip() or None
    label = (form.get("label") or "").strip() or None
    require(not (text and label), "give either a label or a text, not both")
    if label is not None:
        require(label in pipe.labels, f"label {label!r} is not one of the model's labels {sorted(pipe.labels)}")
    notes = []
    for name, value in (("text", text or label), ("rna", rna), ("image", ref)):
        if value is not None:
            require(has[name], f"this model has no usable '{name}' condition stream (it has {list(pipe.modalities)})")
    if rna is not None:
        notes.append(check_genes(rna, pipe.vocabulary))
    given = {m for m, v in (("text", text or label), ("rna", rna), ("image", ref)) if v is not None}
    guidance = per_modality(form, "guidance", given, 1.0, 20.0) or None
    scales = per_modality(form, "scale", given, 1.0, 4.0)
    scales = scales if any(v != 1.0 for v in scales.values()) else None
    pipe.check_guidance(guidance, {m: True for m in given})
    pipe.check_scales(scales, {m: True for m in given})
    options = sampling_options(form, limits)
    n = _int(form, "n", 1, 1, limits.max_n)

    def run(job: Job) -> dict:
        out = pipe(text=text, label=label, rna=rna, image=ref, n=n, guidance=guidance, scales=scales, **options)
        result = packaged(out)
        result["notes"] = notes + [x for x in result["notes"] if x not in notes]
        return result

    return run


def image_request(pipe, form: dict, limits: Limits, source) -> Callable[[Job], dict]:
    """Checked stain / translate / vary parameters for the uploaded ``source`` (PIL RGB) -> the job."""
    choice = str(form.get("method") or image_methods(pipe)[0])
    require(choice in image_methods(pipe), f"method {choice!r} is not offered by this model; choose one of "
                                           f"{image_methods(pipe)}")
    task, method = choice.split(":")
    options = sampling_options(form, limits)
    strength = _float(form, "strength", 0.6, 0.0, 1.0) if method == "sdedit" else None
    check_mode_options(method, guidance=None, steps=options["steps"], sampler=options["sampler"], strength=strength)
    text = (form.get("text") or "").strip() or None
    if text is not None:
        require(streams(pipe)["text"], f"this model has no text stream (it has {list(pipe.modalities)}); clear the text")
    kwargs: dict[str, Any] = dict(text=text, **options)

    def run(job: Job) -> dict:
        with tile_progress(job):
            if task == "vary":
                out = pipe.vary(source, strength=strength, n=1, **kwargs)
            elif task == "stain":
                out = pipe.stain(source, method=method, **kwargs)
            else:
                out = pipe.translate(source, method=method, **({"strength": strength} if strength is not None else {}),
                                     **kwargs)
        return packaged(out)

    return run
