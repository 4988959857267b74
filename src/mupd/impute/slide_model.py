"""A trained slide-level model as a folder: ``slide_config.json`` (genes, feature width, target
normalisation, target mean/std, training slides) + ``model.safetensors`` (the MIL regressor)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import atomic_folder, load_tensors, read_json, save_tensors, write_json
from ..data.expression import normalise
from ..errors import MupdError, require
from .slide import MilRegressor, fit_mil, predict_mil

FORMAT = "mupd-impute-slide"


def train_slide_model(bags, values: np.ndarray, genes, *, normalisation: str = "none", n_genes: int | None = None,
                      epochs: int = 40, hidden: int = 128, seed: int = 0):
    """Returns (model, config dict). Gene panel: top ``n_genes`` by variance of the normalised targets."""
    y = normalise(values, normalisation, genes=genes)
    keep = np.arange(len(genes))
    if n_genes is not None and n_genes < len(genes):
        keep = np.sort(np.argsort(-y.var(0), kind="stable")[:n_genes])
    y = y[:, keep]
    model, mean, std, history = fit_mil(bags, y, epochs=epochs, hidden=hidden, seed=seed)
    config = {"format": FORMAT, "genes": [str(genes[k]) for k in keep], "in_dim": int(model.in_dim), "hidden": hidden,
              "normalisation": normalisation, "target_mean": mean.tolist(), "target_std": std.tolist(),
              "epochs": epochs, "train_loss": history, "n_train_slides": len(bags),
              "gene_selection": f"top {len(keep)} by variance of {normalisation} over the training slides"}
    return model, config


def save_slide_model(path: str | os.PathLike, model: MilRegressor, config: dict) -> Path:
    with atomic_folder(path) as tmp:
        write_json(tmp / "slide_config.json", config)
        save_tensors(tmp / "model.safetensors", model.state_dict())
    return Path(path)


def read_slide_config(path: str | os.PathLike) -> dict:
    path = Path(path)
    require(path.is_dir(), f"slide model folder {path} does not exist; create one with 'mupd impute slide-train'")
    config = read_json(path / "slide_config.json")
    require(config.get("format") == FORMAT, f"{path / 'slide_config.json'} is not a mupd slide imputation model")
    return config


def load_slide_model(path: str | os.PathLike):
    config = read_slide_config(path)
    model = MilRegressor(config["in_dim"], len(config["genes"]), config["hidden"])
    try:
        model.load_state_dict(load_tensors(Path(path) / "model.safetensors"))
    except RuntimeError as exc:
        raise MupdError(f"{path}/model.safetensors does not match slide_config.json ({str(exc)[:200]})") from None
    return model.eval(), config


@torch.no_grad()
def predict_slides(model, config: dict, bags) -> np.ndarray:
    return predict_mil(model, np.asarray(config["target_mean"]), np.asarray(config["target_std"]), bags)
