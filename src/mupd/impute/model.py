"""A trained spot-level imputation model as a folder (what ``mupd impute train`` writes and
``predict`` reads): ``impute_config.json`` (method, gene panel, normalisation, crop/resize, training
sections, chosen hyper-parameters), ``readout.safetensors`` (ridge / retrieval / head tensors) and,
for the aligned methods, ``align/`` (the image<->RNA towers trained on the same sections).
Written atomically; nothing is unpickled."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import atomic_folder, load_tensors, read_json, save_tensors, write_json
from ..errors import MupdError, require
from . import protocols
from .features import encoder_features, pixel_features, registry_encoder, untrained_encoder
from .ridge import RidgeReadout
from .runner import FINETUNED, METHODS, NEEDS_ALIGNMENT, RunSettings, context_neighbours

FORMAT = "mupd-impute-spot"


def select_panel(table, n_genes: int, gene_rule: str, candidates: list | None = None) -> list[str]:
    """Top ``n_genes`` by ``gene_rule`` of log1p-CPM (CPM over all genes) among ``candidates`` (default: all)."""
    if candidates is None:
        return protocols.select_genes(table.counts, table.genes, n_genes, gene_rule)
    have = set(table.genes)
    pool = [g for g in dict.fromkeys(map(str, candidates)) if g in have]
    require(len(pool) >= 1, f"none of the {len(candidates)} candidate genes (e.g. {list(candidates)[:3]}) is in the "
                            f"expression table (e.g. {list(table.genes)[:3]})")
    x = protocols.normalised_panel(table.counts, table.genes, pool)
    score = x.var(0) if gene_rule == "variance" else x.mean(0)
    return [pool[k] for k in np.sort(np.argsort(-score, kind="stable")[:n_genes])]


@dataclass
class SpotModel:
    method: str
    genes: list  # the predicted panel, in order
    config: dict = field(default_factory=dict)
    tensors: dict = field(default_factory=dict)  # numpy arrays
    align: object = None  # AlignModel for the aligned methods
    net: object = None  # finetuned SpotRegressor

    @classmethod
    def fit(cls, method: str, table, *, n_genes: int = 250, gene_rule: str = "variance", settings: RunSettings | None = None,
            progress: bool = False, candidates: list | None = None) -> "SpotModel":
        """``candidates``: draw the panel from these genes only (e.g. a generator's vocabulary)."""
        require(method in METHODS, f"unknown imputation method '{method}'; known: {list(METHODS)}")
        settings = settings or RunSettings()
        require(method != "encoder-ridge" or settings.encoder, "method encoder-ridge needs --encoder NAME (and --encoder-path DIR)")
        genes = select_panel(table, n_genes, gene_rule, candidates)
        y = protocols.normalised_panel(table.counts, table.genes, genes, sample_ids=table.ids)
        groups = np.asarray(table.section)
        model = cls(method, genes, {"format": FORMAT, "method": method, "normalisation": "log1p_cpm",
                                    "gene_selection": f"top {n_genes} by {gene_rule} of log1p_cpm on the training spots"
                                                      + (f" among {len(candidates)} given candidate genes" if candidates else ""),
                                    "image_size": int(table.images.shape[1]), "crop_px": table.meta.get("crop_px"),
                                    "train_sections": sorted(set(table.section)), "n_train_spots": len(table),
                                    "settings": settings.to_dict()})
        if method in NEEDS_ALIGNMENT:
            from .aligned import train_fold_alignment

            model.align = train_fold_alignment(table.images, table.counts, table.genes, groups, n_genes=n_genes,
                                               total_samples=settings.align_samples, seed=settings.seed, progress=progress)
        if method == "mean":
            model.tensors = {"mean": y.mean(0)}
        elif method.endswith("-ridge"):
            readout = RidgeReadout(n_components=settings.n_components).fit(model.features(table.images), y, groups)
            model.tensors = dict(readout.params)
            model.config["readout"] = readout.describe()
        elif method == "aligned-retrieval":
            from .retrieval import rna_embeddings

            model.tensors = {"reference_embeddings": rna_embeddings(model.align, table.counts, table.genes), "reference_expression": y}
            model.config["readout"] = {"k": settings.retrieval_k}
        else:
            from .finetune import fit_finetuned

            near = (None, None)
            if method == "finetuned-context":
                near = context_neighbours(table, np.arange(len(table)), settings.context_k)
                model.config["context"] = {"pool": settings.context_pool, "k": settings.context_k,
                                           "neighbours": "nearest spots of the same section (array position)"}
            model.net, mean, std, history = fit_finetuned(model.align.towers["image"], table.images, y,
                                                          epochs=settings.finetune_epochs, seed=settings.seed, progress=progress,
                                                          context=settings.context_pool if near[0] is not None else None,
                                                          neighbours=near[0], neighbour_mask=near[1])
            model.tensors = {"target_mean": mean, "target_std": std}
            model.config["readout"] = {"epochs": settings.finetune_epochs, "train_loss": history}
        return model

    def features(self, images: np.ndarray) -> np.ndarray:
        if self.method == "pixels-ridge":
            return pixel_features(images)
        if self.method == "encoder-ridge":
            return encoder_features(registry_encoder(RunSettings(**self.config["settings"])), images, pooled_tokens=False)
        if self.method == "untrained-ridge":
            return encoder_features(untrained_encoder(images.shape[1], self.config["settings"]["seed"]), images)
        return encoder_features(self.align.towers["image"], images)

    def predict(self, images: np.ndarray, spots=None) -> np.ndarray:
        """(N, S, S, 3) uint8 crops (resized as at training) -> (N, len(genes)) log1p-CPM. ``spots``:
        the table the crops come from (ids, section, coords): a context model needs it to find each
        spot's neighbours among the spots predicted together."""
        side = self.config["image_size"]
        require(images.ndim == 4 and images.shape[1:] == (side, side, 3),
                f"this model takes {side}x{side} RGB crops, got {images.shape[1:]}; load spots with size={side}")
        t = self.tensors
        if self.method == "mean":
            return np.broadcast_to(t["mean"], (len(images), len(self.genes))).copy()
        if self.method.endswith("-ridge"):
            return RidgeReadout(params=t).predict(self.features(images))
        if self.method == "aligned-retrieval":
            from .retrieval import RetrievalIndex, image_embeddings

            index = RetrievalIndex(t["reference_embeddings"], t["reference_expression"], self.config["readout"]["k"])
            return index.predict(image_embeddings(self.align, images))
        from .finetune import predict_finetuned

        near = (None, None)
        if self.config.get("context"):
            require(spots is not None and len(spots.ids) == len(images),
                    "this model reads neighbouring spots (finetuned-context): predict whole sections, passing their spots")
            near = context_neighbours(spots, np.arange(len(images)), self.config["context"]["k"])
        return predict_finetuned(self.net, t["target_mean"], t["target_std"], images, *near)

    def save(self, path: str | os.PathLike) -> Path:
        with atomic_folder(path) as tmp:
            write_json(tmp / "impute_config.json", {**self.config, "genes": list(self.genes)})
            save_tensors(tmp / "readout.safetensors", {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64))
                                                       for k, v in self.tensors.items()})
            if self.align is not None:
                self.align.save_pretrained(tmp / "align", align_config=getattr(self.align, "align_config", {}),
                                           vocabulary=self.align.vocabulary)
            if self.net is not None:
                save_tensors(tmp / "finetuned.safetensors", self.net.state_dict())
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SpotModel":
        path = Path(path)
        require(path.is_dir(), f"imputation model folder {path} does not exist; create one with 'mupd impute train'")
        config = read_json(path / "impute_config.json")
        require(config.get("format") == FORMAT, f"{path / 'impute_config.json'} is not a mupd imputation model (format != {FORMAT!r})")
        model = cls(config["method"], list(config.pop("genes")), config,
                    {k: v.numpy() for k, v in load_tensors(path / "readout.safetensors").items()})
        if model.method in NEEDS_ALIGNMENT:
            from ..align.model import AlignModel, load_vocabulary

            model.align = AlignModel.from_pretrained(path / "align").eval()
            model.align.vocabulary = load_vocabulary(path / "align")
        if model.method in FINETUNED:
            from .finetune import SpotRegressor

            model.net = SpotRegressor(model.align.towers["image"], len(model.genes), (config.get("context") or {}).get("pool"))
            state = load_tensors(path / "finetuned.safetensors")
            try:
                model.net.load_state_dict(state)
            except RuntimeError as exc:
                raise MupdError(f"{path / 'finetuned.safetensors'} does not match the model's towers ({str(exc)[:200]})") from None
            model.net.eval()
        return model
