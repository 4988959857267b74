"""Fitted heads on disk: one folder per (fold, seed) of a cross-validated run, written as soon as that
fit finishes, so an interrupted run resumes where it stopped and any fitted head can be applied to
new inputs (``mupd heads evaluate RUN --cohort TABLE``) without refitting.

``OUT/folds/fold<i>-seed<s>/``: ``head.safetensors`` (weights, plus the training fold's standardiser
as ``scale.mean`` / ``scale.std``), ``head.json`` (what rebuilds the head: architecture, input feature
names, bin edges, the training-median risk threshold, classes; and ``key``, a digest of the run's
config and this fold's rows) and ``predictions.csv`` (its out-of-fold rows). Written atomically; a
folder whose ``key`` differs from the current run's is refitted, never reused.
A lifelines-cox fold is saved as the linear head its coefficients define ((x - mean) @ beta).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..checkpoint import atomic_folder, load_tensors, read_json, save_tensors, write_json
from ..errors import require

FORMAT = "mupd-heads-fold"


def run_key(config: dict, case_ids, fold) -> str:
    """Digest of everything a fold's result depends on: the run config and the fold's train/test rows."""
    case_ids = np.asarray(case_ids).astype(str)
    blob = json.dumps({"config": config, "train": case_ids[fold.train].tolist(), "test": case_ids[fold.test].tolist()},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class FoldStore:
    """Saves each finished (fold, seed) and hands back the ones already done with the same key."""

    def __init__(self, out: str | os.PathLike, config: dict, case_ids):
        self.root = Path(out) / "folds"
        self.config = config
        self.case_ids = np.asarray(case_ids).astype(str)
        self.reused = 0

    def folder(self, fold: int, seed: int) -> Path:
        return self.root / f"fold{fold}-seed{seed}"

    def done(self, fold, seed: int):
        """The saved predictions of this fit (a DataFrame) if it finished under the same key, else None."""
        import pandas as pd

        folder = self.folder(fold.index, seed)
        if not (folder / "head.json").is_file() or not (folder / "predictions.csv").is_file():
            return None
        if read_json(folder / "head.json").get("key") != run_key(self.config, self.case_ids, fold):
            return None
        self.reused += 1
        return pd.read_csv(folder / "predictions.csv", dtype={"case_id": str})

    def save(self, fold, seed: int, frame, model=None, scale=None, meta: dict | None = None) -> None:
        meta = {"format": FORMAT, "fold": fold.index, "seed": seed, "key": run_key(self.config, self.case_ids, fold),
                "run_config": self.config, "has_weights": model is not None, **(meta or {})}
        with atomic_folder(self.folder(fold.index, seed)) as tmp:
            if model is not None:
                tensors = dict(model.state_dict())
                if scale is not None:
                    tensors.update({"scale.mean": _tensor(scale.mean), "scale.std": _tensor(scale.std)})
                save_tensors(tmp / "head.safetensors", tensors)
            write_json(tmp / "head.json", meta)
            frame.to_csv(tmp / "predictions.csv", index=False)


def _tensor(array):
    import torch

    return torch.as_tensor(np.asarray(array, dtype=np.float32))


def load_fitted(folder: str | os.PathLike):
    """(model in eval mode, standardiser or None, meta) of a saved fold; never unpickles."""
    import torch

    from .fit import Standardiser
    from .models import build_head

    folder = Path(folder)
    require((folder / "head.json").is_file(), f"{folder} holds no fitted head (no head.json); run `mupd heads train` first")
    meta = read_json(folder / "head.json")
    require(meta.get("format") == FORMAT, f"{folder / 'head.json'} is not a mupd fitted head (format != {FORMAT!r})")
    require(meta.get("has_weights", False), f"{folder} keeps no weights (written by an older mupd); rerun `mupd heads train`")
    tensors = load_tensors(folder / "head.safetensors")
    model = build_head(meta["head"], meta["in_dim"], meta["out_dim"], hidden=meta["hidden"], dropout=meta["dropout"],
                       genes=meta.get("genes"), pathways=meta.get("pathways"))
    state = {k: v for k, v in tensors.items() if not k.startswith("scale.")}
    model.load_state_dict(state, strict=True)
    scale = None
    if "scale.mean" in tensors:
        scale = Standardiser.__new__(Standardiser)
        scale.mean, scale.std = tensors["scale.mean"].numpy(), tensors["scale.std"].numpy()
    with torch.no_grad():
        model.eval()
    return model, scale, meta
