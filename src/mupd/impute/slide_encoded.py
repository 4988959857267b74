"""Slide bags from ``mupd data encode`` output (a shard folder) instead of TRIDENT/CLAM ``.h5`` files.

What the shards hold (``mupd.data.shards``): per tile, its id, the autoencoder latent and, when the
job named encoders, condition tokens (``image`` (N, L, D) + ``image_mask`` from ``--image-encoder``)
or alignment targets (``align_cls`` from ``--align-encoder``). The tile feature is, in this order:
the masked mean of the ``image`` tokens, the ``align_cls`` vector, or — when no encoder ran — the
latent's per-channel mean and std (a weak stand-in, named as such in the result).

What the shards do *not* hold: a tile's slide and position. Those are read from the manifest the
job encoded (``index.json`` -> ``job.source``; ``mupd data tile`` writes ``slide_id``, ``x``, ``y``
columns), joined by tile id, or from ``manifest=`` when that file has moved.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import MupdError, require

FEATURE_KEYS = ("image", "align_cls", "latent")


def is_shard_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / "index.json").is_file() and not any(Path(path).glob("*.h5"))


def _read_shard(folder: Path, name: str, key: str) -> np.ndarray:
    """One shard's tile features (N, D) float32, reading only the tensors needed."""
    import torch
    from safetensors import safe_open

    with safe_open(str(folder / f"{name}.safetensors"), framework="pt") as f:
        x = f.get_tensor(key).float()
        mask = f.get_tensor(f"{key}_mask") if key == "image" and f"{key}_mask" in f.keys() else None
    if key == "image":
        w = (mask if mask is not None else x.new_ones(x.shape[:2], dtype=bool)).float().unsqueeze(-1)
        x = (x * w).sum(1) / w.sum(1).clamp_min(1.0)
    elif key == "latent":
        x = x.flatten(2)
        x = torch.cat([x.mean(2), x.std(2)], dim=1)
    return x.numpy().astype(np.float32)


def encoded_tile_features(folder: str | os.PathLike) -> tuple[list[str], np.ndarray, str]:
    """(tile ids, features (N, D), what the features are) of every shard, in shard order."""
    from ..checkpoint import read_json
    from ..data.shards import read_index

    folder = Path(folder)
    index = read_index(folder)
    have = index.get("tensors", {})
    key = next((k for k in FEATURE_KEYS if k in have), None)
    require(key is not None, f"{folder}/index.json lists no tile tensors ({sorted(have)}); re-run 'mupd data encode'")
    encoders = index.get("encoders", {})
    names = {"image": f"mean of the '{encoders.get('image', {}).get('name')}' image encoder's tokens",
             "align_cls": f"CLS of the '{encoders.get('align', {}).get('name')}' alignment encoder",
             "latent": "autoencoder latent channel mean and std (the shards hold no encoder features; "
                       "re-encode with --image-encoder NAME for real tile features)"}
    ids, parts = [], []
    for shard in index["shards"]:
        ids += [str(i) for i in read_json(folder / f"{shard['name']}.json")["ids"]]
        parts.append(_read_shard(folder, shard["name"], key))
    features = np.concatenate(parts)
    require(len(ids) == len(features), f"{folder}: {len(ids)} tile ids but {len(features)} feature rows; re-encode")
    require(np.isfinite(features).all(), f"{folder}: tile features contain NaN/inf values")
    return ids, features, names[key]


def _source_manifest(folder: Path, manifest: str | os.PathLike | None) -> Path:
    from ..data.shards import read_index

    if manifest is not None:
        path = Path(manifest)
    else:
        source = (read_index(folder).get("job") or {}).get("source")
        require(source is not None, f"{folder}/index.json names no source manifest; pass --manifest with slide_id, x, y per tile id")
        path = Path(source)
        path = path / "manifest.csv" if path.is_dir() else path
    require(path.is_file(), f"the tile manifest {path} (slide_id per tile id) is not here; pass --manifest MANIFEST.csv "
                            "(the 'mupd data tile' manifest the shards were encoded from)")
    return path


def encoded_bags(folder: str | os.PathLike, manifest: str | os.PathLike | None = None) -> tuple[dict, dict, str]:
    """{slide stem: features (n, D)}, {slide stem: coords (n, 2) or None}, feature description."""
    import pandas as pd

    from .slide_data import _stem

    folder = Path(folder)
    ids, features, name = encoded_tile_features(folder)
    path = _source_manifest(folder, manifest)
    sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    try:
        table = pd.read_csv(path, sep=sep, dtype={"id": str, "slide_id": str}, low_memory=False)
    except Exception as exc:
        raise MupdError(f"{path} could not be read as a manifest ({exc})") from None
    require({"id", "slide_id"} <= set(table.columns), f"{path} has no 'id' and 'slide_id' columns (it has {list(table.columns)[:8]}); "
                                                       "slide bags need each tile's slide ('mupd data tile' writes them)")
    table = table.drop_duplicates("id").set_index("id")
    absent = [i for i in ids if i not in table.index]
    require(not absent, f"{len(absent)} encoded tiles are not in {path}, first {absent[:3]}; pass the manifest they were encoded from")
    rows = table.loc[ids]
    slides = [_stem(s) for s in rows["slide_id"].astype(str)]
    coords = rows[["x", "y"]].to_numpy(np.float64) if {"x", "y"} <= set(rows.columns) else None
    bags, where = {}, {}
    for slide in dict.fromkeys(slides):
        take = np.array([s == slide for s in slides])
        bags[slide] = features[take]
        where[slide] = None if coords is None else coords[take]
    return bags, where, name
