"""Image encoders through ``timm`` (UNI, Virchow2, H-optimus, Prov-GigaPath, any timm model) and
the PLIP CLIP vision tower through ``transformers``.

Weights come from a local folder (``timm.models.save_for_hf`` layout: config.json +
model.safetensors) or from an explicit ``path="hub:ORG/NAME"`` (``hf-hub:`` is the same); nothing downloads otherwise,
and a path that does not exist is an error naming it (never tried as a hub id).
Frozen: no gradients. Inputs are resized to the model's input size and normalised with its mean/std.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import MupdError
from .base import ConditionEncoder, images_to_float, register, require_package, resolve_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImagePreprocess(torch.nn.Module):
    """Resize to ``size`` and normalise; accepts every image batch form ``images_to_float`` does."""

    def __init__(self, size: int | tuple[int, int], mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, batch) -> torch.Tensor:
        x = images_to_float(batch, self.mean.device)
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", antialias=True, align_corners=False)
        return (x - self.mean) / self.std


class TimmImageEncoder(ConditionEncoder):
    """Tokens = ``forward_features`` (ViT: prefix + patch tokens; CNN: flattened feature map);
    embed = the model's pooled pre-logits feature (ViT: CLS or mean, as the model was built)."""

    modality = "image"

    def __init__(self, path, *, what: str = "image encoder", hub_id: str | None = None, img_size: int | None = None,
                 embedding: str = "pooled", **model_kwargs):
        super().__init__()
        require_package("timm", "encoders", what)
        import timm

        source = resolve_weights(path, what=what, hub_id=hub_id, expected="config.json and model.safetensors (timm save_for_hf)")
        name = source if source.startswith("hf-hub:") else f"local-dir:{source}"
        if img_size is not None:
            model_kwargs["img_size"] = img_size
        try:
            self.model = timm.create_model(name, pretrained=True, num_classes=0, **model_kwargs)
        except Exception as exc:  # timm/safetensors raise many types for a bad folder; name the folder
            raise MupdError(f"{what}: could not load a timm model from {source} ({type(exc).__name__}: {exc})") from None
        self.model.eval().requires_grad_(False)
        data = timm.data.resolve_data_config({}, model=self.model)
        self.preprocess = ImagePreprocess(tuple(data["input_size"][-2:]), data["mean"], data["std"])
        self.width = int(self.model.num_features)
        if embedding not in ("pooled", "cls+mean"):
            raise MupdError(f"{what}: embedding must be 'pooled' or 'cls+mean', not {embedding!r}")
        self.embedding = embedding  # Virchow2's recommended embedding is concat(CLS, mean of patch tokens)
        self.embed_width = 2 * self.width if embedding == "cls+mean" else self.width
        self.source = source

    def _features(self, batch) -> torch.Tensor:
        with torch.no_grad():
            return self.model.forward_features(self.preprocess(batch))

    def encode(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self._features(batch)
        if feats.ndim == 4:  # CNN feature map (B, C, H, W) -> (B, HW, C)
            feats = feats.flatten(2).transpose(1, 2)
        mask = torch.ones(feats.shape[:2], dtype=torch.bool, device=feats.device)
        return feats.float(), mask

    def embed(self, batch) -> torch.Tensor:
        feats = self._features(batch)
        if self.embedding == "cls+mean":
            prefix = getattr(self.model, "num_prefix_tokens", 1)
            return torch.cat([feats[:, 0], feats[:, prefix:].mean(1)], dim=-1).float()
        with torch.no_grad():
            return self.model.forward_head(feats, pre_logits=True).float()


@register("image", "timm", licence="the loaded model's own (read its card)", base="the loaded model's own",
          commercial="check",
          source="any timm model: local folder (timm save_for_hf) or path='hub:ORG/NAME'", width="from the model")
def build_timm(path=None, img_size: int | None = None, embedding: str = "pooled", **model_kwargs):
    return TimmImageEncoder(path, what="image encoder 'timm'", img_size=img_size, embedding=embedding, **model_kwargs)


def _named_timm(name: str, hub_id: str, default_kwargs: dict, embedding: str = "pooled"):
    def build(path=None, img_size: int | None = None, **model_kwargs):
        kwargs = {**default_kwargs, **model_kwargs}
        return TimmImageEncoder(path, what=f"image encoder '{name}'", hub_id=hub_id, img_size=img_size,
                                embedding=kwargs.pop("embedding", embedding), **kwargs)

    build.__name__ = f"build_{name.replace('-', '_')}"
    return build


def _swiglu_kwargs() -> dict:
    # Virchow2's MLP; resolved lazily so importing this module does not import timm.
    import timm.layers

    return {"mlp_layer": timm.layers.SwiGLUPacked, "act_layer": torch.nn.SiLU}


register("image", "uni", licence="CC-BY-NC-ND-4.0", base="Mass-100K slides (MGB), research use only", commercial="no", gated=True,
         source="hf MahmoodLab/UNI (ViT-L/16, Mass General Brigham)", width=1024)(
    _named_timm("uni", "MahmoodLab/uni", {"init_values": 1e-5, "dynamic_img_size": True}))
register("image", "uni2-h", licence="CC-BY-NC-ND-4.0", base="MGB slides, research use only", commercial="no", gated=True,
         source="hf MahmoodLab/UNI2-h (ViT-H/14)", width=1536)(
    _named_timm("uni2-h", "MahmoodLab/UNI2-h", {"dynamic_img_size": True}))
register("image", "h-optimus-0", licence="Apache-2.0", base="Bioptimus' own slide collection (not redistributed)", commercial="yes",
         source="hf bioptimus/H-optimus-0 (ViT-g/14)", width=1536)(
    _named_timm("h-optimus-0", "bioptimus/H-optimus-0", {"init_values": 1e-5, "dynamic_img_size": False}))
register("image", "prov-gigapath", licence="Apache-2.0 (model card)", base="Providence slides; the card says research use only",
         commercial="check",
         source="hf prov-gigapath/prov-gigapath tile encoder (ViT-g/14)", width=1536)(
    _named_timm("prov-gigapath", "prov-gigapath/prov-gigapath", {}))


@register("image", "virchow2", licence="CC-BY-NC-ND-4.0", base="Paige/MSKCC slides, research use only", commercial="no", gated=True,
          source="hf paige-ai/Virchow2 (ViT-H/14, 4 registers)", width=1280)
def build_virchow2(path=None, img_size: int | None = None, embedding: str = "cls+mean", **model_kwargs):
    kwargs = {**_swiglu_kwargs(), **model_kwargs}
    return TimmImageEncoder(path, what="image encoder 'virchow2'", hub_id="paige-ai/Virchow2", img_size=img_size,
                            embedding=embedding, **kwargs)


class ClipVisionEncoder(ConditionEncoder):
    """A ``transformers`` CLIP vision tower (PLIP): tokens = last hidden state, embed = projected CLS."""

    modality = "image"

    def __init__(self, path, *, what: str, hub_id: str | None = None):
        super().__init__()
        require_package("transformers", "encoders", what)
        import transformers

        source = resolve_weights(path, what=what, hub_id=hub_id, expected="config.json and model weights (CLIP)")
        name, kwargs = (source[len("hf-hub:"):], {}) if source.startswith("hf-hub:") else (source, {"local_files_only": True})
        try:
            config = transformers.AutoConfig.from_pretrained(name, **kwargs)
            if config.model_type == "clip":  # the tower's config must carry the joint projection width
                config.vision_config.projection_dim = config.projection_dim
                config = config.vision_config
            self.model = transformers.CLIPVisionModelWithProjection.from_pretrained(name, config=config, **kwargs)
        except (OSError, ValueError) as exc:
            raise MupdError(f"{what}: could not load a CLIP vision model from {source} ({exc})") from None
        self.model.eval().requires_grad_(False)
        cfg = self.model.config
        self.width = int(cfg.hidden_size)
        mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # CLIP's
        self.preprocess = ImagePreprocess(int(cfg.image_size), mean, std)

    def _forward(self, batch):
        with torch.no_grad():
            return self.model(pixel_values=self.preprocess(batch))

    def encode(self, batch):
        tokens = self._forward(batch).last_hidden_state.float()
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)

    def embed(self, batch):
        return self._forward(batch).image_embeds.float()


@register("image", "plip", licence="MIT (model card)", base="OpenAI CLIP ViT-B/32 (MIT) tuned on OpenPath (Twitter posts; research use)",
          commercial="check", source="hf vinid/plip (CLIP ViT-B/32 vision tower)", width=768)
def build_plip_image(path=None):
    return ClipVisionEncoder(path, what="image encoder 'plip'", hub_id="vinid/plip")
