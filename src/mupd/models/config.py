"""MuPDConfig: everything needed to rebuild the backbone, plus the named size presets.

Presets follow DiT/SiT: ``S`` 12x384x6, ``B`` 12x768x12, ``L`` 24x1024x16, ``XL`` 28x1152x16, each
with patch size 2, 4 or 8 (``"B/4"``), and ``tiny`` (2 blocks, width 64) for tests.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import MupdError

# name -> (depth, hidden_size, num_heads)
SIZES = {
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}
TINY = dict(depth=2, hidden_size=64, num_heads=4, patch_size=2, input_size=8)
DEFAULT_MODALITIES = ("image", "text", "rna")


def preset_names() -> list[str]:
    return ["tiny"] + [f"{size}/{patch}" for size in SIZES for patch in (2, 4, 8)]


@dataclass
class MuPDConfig:
    """The resolved model configuration (what ``config.json`` holds).

    ``cond_dims``: input token width per modality (default ``hidden_size``); tokens are projected to
    ``hidden_size`` by a per-modality Linear inside the model. ``vector_modalities``: modalities given
    as a vector of scalars (e.g. ``{"rna": 331}`` pathway scores) that the model turns into one token
    per entry, ``token_i = x_i * e_i + b_i``. ``repa_block``: 1-based index of the block whose output
    tokens are returned as ``extras["hidden"]`` (REPA). ``cls_dim``: width of a REG-style encoder CLS
    vector denoised alongside the image. ``conv_mlp``: a depthwise 3x3 convolution over the token
    grid inside every MLP (SANA's Mix-FFN), so neighbouring patches mix from the first step; the
    one change that brought nucleus-like structure to the CPU demo (README). ``time_scale``: the
    network sees ``t * time_scale`` (1000 gives DiT's timestep range; SiT/REPA weights use 1). ``timestep_freq_shift``: 0 = DiT/SiT
    sinusoid, 1 = diffusers' DiT. ``time_reversed``: the network runs SiT's time (data at 1): it sees
    ``1 - t`` and predicts ``data - noise``, which ``forward`` negates, so callers always get mupd's
    velocity (``noise - data``, t = 1 noise); set by converting SiT weights (``convention="sit"``).
    """

    input_size: int = 32
    patch_size: int = 2
    in_channels: int = 4
    extra_in_channels: int = 0
    out_channels: int | None = None
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    conv_mlp: bool = False
    modalities: tuple[str, ...] = DEFAULT_MODALITIES
    cond_dims: dict[str, int] = field(default_factory=dict)
    vector_modalities: dict[str, int] = field(default_factory=dict)
    attention: str = "decoupled"
    repa_block: int | None = None
    cls_dim: int | None = None
    grad_checkpointing: bool = False
    time_scale: float = 1000.0
    timestep_freq_shift: float = 0.0
    time_reversed: bool = False

    def __post_init__(self):
        self.modalities = tuple(self.modalities)
        for name in self.vector_modalities:  # a vector modality is a modality
            if name not in self.modalities:
                self.modalities = self.modalities + (name,)
        self.cond_dims = {m: int(self.cond_dims.get(m, self.hidden_size)) for m in self.modalities}
        self.vector_modalities = {k: int(v) for k, v in self.vector_modalities.items()}
        if self.out_channels is None:
            self.out_channels = self.in_channels
        self.validate()

    def validate(self) -> None:
        def need(cond: bool, msg: str):
            if not cond:
                raise MupdError(f"MuPDConfig: {msg}")

        need(self.hidden_size % self.num_heads == 0, f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        need(self.patch_size >= 1 and self.input_size % self.patch_size == 0, f"input_size {self.input_size} is not divisible by patch_size {self.patch_size}")
        need(self.attention in ("decoupled", "shared"), f"attention must be 'decoupled' or 'shared', not {self.attention!r}")
        need(len(set(self.modalities)) == len(self.modalities), f"modalities {self.modalities} has duplicates")
        need(all(isinstance(m, str) and m for m in self.modalities), f"modality names must be non-empty strings: {self.modalities}")
        need(all(d > 0 for d in self.cond_dims.values()), f"cond_dims must be positive: {self.cond_dims}")
        need(all(n > 0 for n in self.vector_modalities.values()), f"vector_modalities sizes must be positive: {self.vector_modalities}")
        need(self.repa_block is None or 1 <= self.repa_block <= self.depth, f"repa_block must be in 1..{self.depth} (1-based), not {self.repa_block}")
        need(self.cls_dim is None or self.cls_dim > 0, f"cls_dim must be positive, not {self.cls_dim}")
        need(self.in_channels > 0 and self.extra_in_channels >= 0 and self.out_channels > 0, "channel counts must be positive")
        need(self.depth >= 1, "depth must be >= 1")
        for name in ("conv_mlp", "grad_checkpointing", "time_reversed"):  # a YAML "yes"/1 would pass silently
            need(isinstance(getattr(self, name), bool), f"{name} must be true or false, not {getattr(self, name)!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def num_patches(self) -> int:
        return (self.input_size // self.patch_size) ** 2

    # ---- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["modalities"] = list(self.modalities)
        return out

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "MuPDConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MupdError(
                f"{source}: unknown MuPDConfig keys {unknown}; known keys are {sorted(known)}. "
                "The file was written by a different mupd version or edited by hand."
            )
        try:
            return cls(**data)
        except TypeError as exc:
            raise MupdError(f"{source}: invalid MuPDConfig ({exc})") from None

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "MuPDConfig":
        """``"tiny"``, or ``"<S|B|L|XL>/<2|4|8>"``; keyword overrides replace any field."""
        if name == "tiny":
            base = dict(TINY)
        else:
            size, _, patch = name.partition("/")
            if size not in SIZES or patch not in ("2", "4", "8"):
                raise MupdError(f"unknown preset {name!r}; known presets: {', '.join(preset_names())}")
            depth, hidden, heads = SIZES[size]
            base = dict(depth=depth, hidden_size=hidden, num_heads=heads, patch_size=int(patch))
        base.update(overrides)
        return cls.from_dict(base, source=f"preset {name!r}")
