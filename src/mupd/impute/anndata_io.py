"""Predictions as AnnData (``.h5ad``), readable by scanpy / squidpy as they are:

* ``.X``: predicted log1p-CPM (float32, spots x genes); ``.var_names``: gene symbols;
* ``.obs``: spot id, ``section``; ``.obsm["spatial"]``: (x, y) spot centres in full-resolution pixels;
* ``.layers["measured"]``: measured log1p-CPM of the same genes, when counts were at hand;
* ``.uns["mupd_impute"]``: the model (method, training sections, hyper-parameters) and the values'
  meaning; ``.uns["log1p"]`` marks ``.X`` as log-transformed for scanpy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import require


def write_predictions(path: str | os.PathLike, predicted: np.ndarray, genes, ids, sections, coords, *,
                      model_info: dict, measured: np.ndarray | None = None, protocol: dict | None = None) -> Path:
    import anndata
    import pandas as pd

    path = Path(path)
    require(path.suffix == ".h5ad", f"predictions are written as AnnData: give a .h5ad path, not {path.name}")
    predicted = np.asarray(predicted, np.float32)
    require(predicted.shape == (len(ids), len(genes)), f"predicted {predicted.shape} does not match {len(ids)} spots x {len(genes)} genes")
    obs = pd.DataFrame({"section": [str(s) for s in sections]}, index=pd.Index([str(i) for i in ids], name="spot"))
    var = pd.DataFrame(index=pd.Index([str(g) for g in genes], name="gene"))
    adata = anndata.AnnData(X=predicted, obs=obs, var=var)
    adata.obsm["spatial"] = np.asarray(coords, np.float64)
    if measured is not None:
        adata.layers["measured"] = np.asarray(measured, np.float32)
    adata.uns["log1p"] = {"base": None}
    adata.uns["mupd_impute"] = {
        "values": "log1p_cpm",
        "values_note": "X = predicted log(1 + counts per million), CPM over all genes of each measured spot",
        "model_json": json.dumps(model_info, default=str), "protocol_json": json.dumps(protocol or {}, default=str),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    adata.write_h5ad(tmp)
    os.replace(tmp, path)
    return path
