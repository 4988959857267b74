"""MUSK and CONCH: vision-language pathology models that ship their own Python packages.

Both are used only when their package is installed (neither is on PyPI); otherwise building them
raises one ``MupdError`` naming the package and where to get it. Weights come from ``path`` (a local
checkpoint file/folder) or an explicit ``path="hub:ORG/NAME"`` (or ``hf-hub:``). These adapters follow the packages'
published usage and are not exercised by the test-suite (the packages are absent there).
"""

from __future__ import annotations

import torch

from .base import ConditionEncoder, check_texts, register, require_external_package, resolve_weights
from .image import ImagePreprocess

MUSK_PIP = "pip install git+https://github.com/lilab-stanford/MUSK (plus access to hf xiangjx/musk)"
CONCH_PIP = "pip install git+https://github.com/Mahmoodlab/CONCH (plus access to hf MahmoodLab/conch)"


class MuskEncoder(ConditionEncoder):
    """MUSK-Large (BEiT-3, 1024-d). Image: one CLS token (MuPD's image condition). Text: CLS token."""

    def __init__(self, modality: str, path=None, max_length: int = 100):
        super().__init__()
        what = f"{modality} encoder 'musk'"
        require_external_package("musk", MUSK_PIP, what)
        source = resolve_weights(path, what=what, hub_id="xiangjx/musk", expected="the MUSK checkpoint (model.safetensors)")
        import timm
        from musk import modeling, utils  # noqa: F401  (modeling registers musk_large_patch16_384 in timm)

        self.modality = modality
        self.model = timm.create_model("musk_large_patch16_384")
        hub = source.replace("hf-hub:", "hf_hub:") if source.startswith("hf-hub:") else source
        utils.load_model_and_may_interpolate(hub, self.model, "model|module", "")
        self.model.eval().requires_grad_(False)
        self.width = 1024
        self.max_length = max_length
        self.preprocess = ImagePreprocess(384, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # MUSK's inception normalisation
        if modality == "text":
            import os

            from transformers import XLMRobertaTokenizer

            self.tokenizer = XLMRobertaTokenizer(os.path.join(os.path.dirname(utils.__file__), "models", "tokenizer.spm"))
            self._utils = utils

    def embed(self, batch) -> torch.Tensor:
        with torch.no_grad():
            if self.modality == "image":
                return self.model(image=self.preprocess(batch), with_head=False, out_norm=False, return_global=True)[0].float()
            texts = check_texts(batch)
            ids, pads = zip(*[self._utils.xlm_tokenizer(t, self.tokenizer, max_len=self.max_length) for t in texts])
            ids = torch.tensor(ids, device=self.device)
            pads = torch.tensor(pads, device=self.device)
            return self.model(text_description=ids, padding_mask=pads, with_head=False, out_norm=False)[1].float()

    def encode(self, batch):
        pooled = self.embed(batch)
        return pooled[:, None], torch.ones(pooled.shape[0], 1, dtype=torch.bool, device=pooled.device)


class ConchEncoder(ConditionEncoder):
    """CONCH ViT-B/16 (image 512-d projected / 768 tokens) and its text tower."""

    def __init__(self, modality: str, path=None):
        super().__init__()
        what = f"{modality} encoder 'conch'"
        require_external_package("conch", CONCH_PIP, what)
        source = resolve_weights(path, what=what, hub_id="MahmoodLab/conch", expected="the CONCH checkpoint (pytorch_model.bin)")
        from conch.open_clip_custom import create_model_from_pretrained, get_tokenizer, tokenize

        checkpoint = source.replace("hf-hub:", "hf_hub:")
        if not checkpoint.startswith("hf_hub:"):
            import pathlib

            folder = pathlib.Path(checkpoint)
            checkpoint = str(folder / "pytorch_model.bin") if folder.is_dir() else checkpoint
        self.model, _ = create_model_from_pretrained("conch_ViT-B-16", checkpoint)
        self.model.eval().requires_grad_(False)
        self.modality = modality
        self.width = 512
        self.preprocess = ImagePreprocess(448, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
        self._tokenizer, self._tokenize = get_tokenizer(), tokenize

    def embed(self, batch) -> torch.Tensor:
        with torch.no_grad():
            if self.modality == "image":
                return self.model.encode_image(self.preprocess(batch), proj_contrast=True, normalize=False).float()
            ids = self._tokenize(texts=check_texts(batch), tokenizer=self._tokenizer).to(self.device)
            return self.model.encode_text(ids, normalize=False).float()

    def encode(self, batch):
        pooled = self.embed(batch)
        return pooled[:, None], torch.ones(pooled.shape[0], 1, dtype=torch.bool, device=pooled.device)


for _modality in ("image", "text"):
    register(_modality, "musk", licence="CC-BY-NC-ND-4.0", base="Stanford slides and PubMed text, research use only",
             commercial="no", gated=True,
             source="lilab-stanford/MUSK package + hf xiangjx/musk", width=1024)(
        lambda path=None, _m=_modality, **kw: MuskEncoder(_m, path, **kw))
    register(_modality, "conch", licence="CC-BY-NC-ND-4.0", base="MGB image-caption pairs, research use only",
             commercial="no", gated=True,
             source="Mahmoodlab/CONCH package + hf MahmoodLab/conch", width=512)(
        lambda path=None, _m=_modality: ConchEncoder(_m, path))
