"""Checkpoint folders: safetensors + JSON, written atomically, read with errors that name the file.

A checkpoint is a folder. ``atomic_folder(path)`` yields a temporary sibling folder; only when the
block finishes is it renamed onto ``path`` (the previous version, if any, is replaced), so a crash
never leaves a half-written folder that looks valid. Nothing here unpickles.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import MupdError


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Write a folder atomically: fill the yielded temp folder; it replaces ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        if path.exists():
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_tree(folder: Path) -> None:
    for f in folder.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj):
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.exists():
        raise MupdError(f"{path} does not exist; is this a mupd checkpoint folder?")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise MupdError(f"{path} is not valid JSON ({exc}); the checkpoint is damaged, re-save it") from None


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: dict | None = None) -> None:
    """Save a flat dict of tensors as safetensors (contiguous, CPU copies; shared storage is split)."""
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    save_file(flat, str(path), metadata={k: str(v) for k, v in (metadata or {}).items()})


def load_tensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.exists():
        raise MupdError(f"{path} does not exist; the checkpoint folder is incomplete")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise MupdError(
            f"{path} could not be read as safetensors ({exc}); the file is truncated or not a "
            "safetensors file. Re-save or re-download the checkpoint."
        ) from None


def load_into(module: torch.nn.Module, path: str | os.PathLike, strict: bool = True) -> None:
    """Load a safetensors file into ``module``, naming the file and tensor on any mismatch."""
    state = load_tensors(path)
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if strict and (missing or unexpected):
        raise MupdError(
            f"{path} does not match the model built from config.json: "
            f"missing tensors {missing[:5]}{'…' if len(missing) > 5 else ''}, "
            f"unexpected tensors {unexpected[:5]}{'…' if len(unexpected) > 5 else ''}"
        )
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            raise MupdError(
                f"{path}: tensor '{key}' has shape {tuple(value.shape)} but the model expects "
                f"{tuple(own[key].shape)}; config.json and the weights disagree"
            )
    module.load_state_dict(state, strict=strict)
