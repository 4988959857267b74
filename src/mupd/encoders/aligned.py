"""``mupd-aligned``: the offline image / text / RNA encoders trained by ``mupd align`` on the sample
data (or yours). Built by name + folder: ``registry.build("image", "mupd-aligned", path=DIR)``.

Returned frozen (eval, no gradients). ``encode`` gives the tower's tokens for the generator;
``embed`` gives the L2-normalised vector in the shared space (retrieval, zero-shot, metrics).
An RNA tower expects expression normalised by the folder's ``gene_vocabulary.json``
(``encoder.gene_vocabulary``).
"""

from __future__ import annotations

from .base import register


def _build(modality: str):
    def build(path=None, device: str = "cpu"):
        from ..align.model import CREATE_HINT, AlignModel, load_vocabulary
        from ..errors import MupdError

        if path is None:
            raise MupdError(f"{modality} encoder 'mupd-aligned' needs path=DIR, an alignment model folder; {CREATE_HINT}")
        model = AlignModel.from_pretrained(path, device=device)
        if modality not in model.towers:
            raise MupdError(f"{path} has towers for {model.modalities}, not '{modality}'; {CREATE_HINT}")
        tower = model.towers[modality].eval().requires_grad_(False)
        if modality == "rna":
            tower.gene_vocabulary = load_vocabulary(path)
        return tower

    return build


for _modality in ("image", "text", "rna"):
    register(_modality, "mupd-aligned", licence="Apache-2.0 (mupd code)",
             base="your training data (e.g. PCam CC0; her2st, TCGA: research use)", commercial="check", source="trained offline by 'mupd align train' (e.g. on PCam / her2st)",
             width="from the checkpoint (default 128)")(_build(_modality))
