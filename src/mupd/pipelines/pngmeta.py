"""Generation parameters in PNG text chunks, so every written image says how to make it again.

Keys (values are JSON text): ``mupd:model`` (folder + config hash), ``mupd:conditions`` (text
verbatim, RNA/images by hash), ``mupd:seed``, ``mupd:sampler``, ``mupd:steps``, ``mupd:guidance``,
plus optional extras (``mupd:task``, ``mupd:scales`` (lambda_m per modality), ``mupd:strength``,
``mupd:steps_run`` (steps of a partial SDEdit path), ``mupd:guidance_interval``, ...). Only what was
applied is recorded (a read-out, which cannot apply guidance, refuses it). Files are written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PIL import Image, PngImagePlugin

from ..errors import MupdError

REQUIRED_KEYS = ("mupd:model", "mupd:conditions", "mupd:seed", "mupd:sampler", "mupd:steps", "mupd:guidance")


def sha256_of(obj: Any) -> str:
    """A stable hash of an array, tensor, PIL image, bytes or JSON-able value (for conditions)."""
    h = hashlib.sha256()
    if isinstance(obj, Image.Image):
        h.update(f"{obj.mode}{obj.size}".encode())
        h.update(obj.tobytes())
    elif hasattr(obj, "detach") or isinstance(obj, np.ndarray):  # tensors hash like their arrays
        if hasattr(obj, "detach"):
            obj = obj.detach().cpu().numpy()
        arr = np.ascontiguousarray(obj.astype(np.float32) if obj.dtype.kind == "f" else obj)
        h.update(f"{arr.dtype}{arr.shape}".encode())
        h.update(arr.tobytes())
    elif isinstance(obj, bytes):
        h.update(obj)
    else:
        h.update(json.dumps(obj, sort_keys=True, default=str).encode())
    return h.hexdigest()


def png_info(params: Mapping[str, Any]) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    for key, value in params.items():
        if not key.startswith("mupd:"):
            key = f"mupd:{key}"
        info.add_text(key, json.dumps(value, sort_keys=True, default=str))
    return info


def save_png(image: Image.Image, path: str | os.PathLike, params: Mapping[str, Any]) -> Path:
    """Save ``image`` as PNG with ``params`` in tEXt chunks; atomic (temp file, then rename)."""
    missing = [k for k in REQUIRED_KEYS if k not in params and k[5:] not in params]
    if missing:
        raise MupdError(f"PNG metadata for {path} lacks {missing}; every written image must record them")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        image.save(tmp, format="PNG", pnginfo=png_info(params))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_params(path: str | os.PathLike) -> dict[str, Any]:
    """The ``mupd:*`` parameters stored in a PNG written by :func:`save_png` (JSON-decoded)."""
    path = Path(path)
    if not path.exists():
        raise MupdError(f"{path} does not exist")
    try:
        with Image.open(path) as im:
            text = dict(getattr(im, "text", {}) or {})
    except (OSError, SyntaxError) as exc:
        raise MupdError(f"{path} is not a readable PNG ({exc})") from None
    out = {}
    for key, value in text.items():
        if key.startswith("mupd:"):
            try:
                out[key] = json.loads(value)
            except json.JSONDecodeError:
                out[key] = value
    return out
