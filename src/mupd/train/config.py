"""Training configuration: typed dataclasses, named presets, YAML in and out, command-line overrides.

Every length is counted in **images (samples)**, never in steps or epochs, so a config means the
same thing at any batch size or world size. The resolved config is stored in every checkpoint
(``train_state/config.yaml``) and printed by ``mupd train CONFIG --dry-run``.

Schema (YAML; every key optional, defaults shown by ``mupd train --preset tiny --dry-run``)::

    preset: tiny               # start from a named preset (see PRESETS), then apply the keys below
    output: runs/my-run        # run folder: checkpoint/, metrics.jsonl, previews/; auto-resumes
    seed: 0
    model:
      preset: S/2              # MuPD size preset: tiny, S/2, B/2, L/2, XL/2 (+ S/4 ...)
      attention: decoupled     # decoupled | shared (ablation)
      grad_checkpointing: false
      overrides: {}            # any other MuPDConfig field, e.g. {depth: 4, hidden_size: 256}
    data:
      source: folder           # folder: class-per-folder patches (encoded once into <output>/latents
                               #   or $MUPD_CACHE/latents, then streamed like shards)
                               # shards: a 'mupd data encode' shard folder (latents, conditions),
                               #   a local path or an fsspec URL (s3://, gs://); streamed, never loaded whole
      path: /data/pcam/train
      image_size: 64           # pixels; the latent side is image_size / vae downsampling
      limit: null              # use only the first N samples (quick runs)
      captions: {"0": "lymph node, normal tissue", "1": "lymph node, metastatic tumour"}
      workers: 0               # DataLoader worker processes reading shards (try 4-8 per GPU)
      augment: false           # dihedral flips/rotations per (seed, stream position), applied to the
                               #   latent, source_latent and alignment grid alike; worth turning on
                               #   for real runs (tissue has no orientation)
    conditions:                # modality -> frozen condition encoder from mupd.encoders.registry
      text: {name: hashed-words, kwargs: {width: 64}, path: null, field: caption}
      # rna: {name: pathway-tokens, kwargs: {width: 64, pathways: genesets/combine_signatures.csv}}
      #   reads the shards' rna_values (field default for rna); the genes come from the shards'
      #   gene_vocabulary.json; its token embeddings are learned with the generator (trainable:
      #   null = true for an RNA encoder built fresh, false when loaded from path; EMA like the
      #   model); the encoder's weights and the vocabulary are saved with the model
    vae: {path: /models/sd-vae-ft-ema, source_path: null}
                               # LatentAutoencoder folder or hub id (needed for folder data,
                               # previews and the pipeline folder); source_path: the source
                               # domain's autoencoder of a stain/translate fine-tune
    # shards may carry precomputed condition tokens "<modality>" + "<modality>_mask" (used as
    # they are) and "source_latent" (paired translation -> extra input channels)
    batch:
      global_size: 256         # fixed by the config, whatever the world size
      per_device: 32           # accumulation steps = global_size / (per_device * world)
    optim: {lr: 1.0e-4, betas: [0.9, 0.999], weight_decay: 0.0, eps: 1.0e-8, grad_clip: 1.0}
    schedule: {kind: constant, warmup_images: 0, min_lr_ratio: 0.0}   # kind: constant | cosine
    total_images: 1000000
    ema: {decay: 0.9999, warmup: false}
    dropout: {p_each: 0.1, p_all: 0.1}    # condition dropout for classifier-free guidance
    time_sampling: uniform     # uniform | logit_normal
    precision: auto            # auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16
    compile: false             # torch.compile the model
    parallel: ddp              # ddp | fsdp (FSDP2 fully_shard, for L/XL on GPUs)
    deterministic: false       # torch.use_deterministic_algorithms (bit-exact resume on CPU)
    align:                     # representation alignment (REPA/iREPA + REG CLS, notes 2.6)
      encoder: null            # image encoder registry name (e.g. a timm ViT); null = off
      kwargs: {}
      path: null
      block: 4                 # align the tokens after this block
      weight: 0.5              # cosine loss weight
      cls_weight: 0.03         # CLS-token velocity loss weight (0 = no CLS token)
      projector_dim: 256
    intervals: {log: 1000, preview: 50000, checkpoint: 50000}   # in images; 0 = never
    preview: {method: heun, steps: 20, guidance: 2.0, per_condition: 4}
    finetune:
      init_from: null          # a pipeline/checkpoint folder, or DiT/SiT/REPA weights
      format: mupd             # mupd | dit | sit | repa (time/velocity convention of the weights)
      use_ema: true
      extra_in_channels: 0     # add zero-initialised input channels (source latents)
      add_modalities: []       # new streams (zero-init gates keep the function)
      freeze: []               # fnmatch patterns of parameter names, e.g. ["blocks.*.attn.*"]
    tensorboard: true          # when tensorboard is installed
    progress: true

Overrides: ``--set optim.lr=3e-4 --set model.preset=S/2`` or dotted flags ``--optim.lr 3e-4``;
values are parsed as YAML scalars/lists.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import MupdError
from .config_io import build_typed, deep_merge, plain, set_dotted


@dataclass
class ModelSection:
    preset: str = "tiny"
    attention: str = "decoupled"
    grad_checkpointing: bool = False
    overrides: dict = field(default_factory=dict)


@dataclass
class DataSection:
    source: str = "folder"
    path: str = ""
    image_size: int = 64
    limit: int | None = None
    captions: dict = field(default_factory=dict)
    workers: int = 0  # DataLoader processes reading shards (0 = in the training process)
    augment: bool = False  # a random flip/90-degree rotation per (seed, position), latents and paired maps alike


@dataclass
class EncoderSpec:
    name: str = "hashed-words"
    kwargs: dict = field(default_factory=dict)
    path: str | None = None
    field: str = "caption"
    trainable: bool | None = None  # None: RNA token encoders built fresh are learned (DESIGN), others frozen


@dataclass
class VAESection:
    path: str | None = None
    source_path: str | None = None  # the source domain's autoencoder (stain / translate), saved as source_vae/


@dataclass
class BatchSection:
    global_size: int = 32
    per_device: int = 32


@dataclass
class OptimSection:
    lr: float = 1e-4
    betas: tuple = (0.9, 0.999)
    weight_decay: float = 0.0
    eps: float = 1e-8
    grad_clip: float = 1.0


@dataclass
class ScheduleSection:
    kind: str = "constant"
    warmup_images: int = 0
    min_lr_ratio: float = 0.0


@dataclass
class EMASection:
    decay: float = 0.9999
    warmup: bool = False  # effective decay min(decay, (1+n)/(10+n)) after n updates


@dataclass
class DropoutSection:
    p_each: float = 0.1
    p_all: float = 0.1


@dataclass
class AlignSection:
    encoder: str | None = None
    kwargs: dict = field(default_factory=dict)
    path: str | None = None
    block: int = 4
    weight: float = 0.5
    cls_weight: float = 0.03
    projector_dim: int = 256


@dataclass
class IntervalSection:
    log: int = 1000
    preview: int = 0
    checkpoint: int = 0


@dataclass
class PreviewSection:
    method: str = "heun"
    steps: int = 20
    guidance: float | None = 2.0
    per_condition: int = 4


@dataclass
class FinetuneSection:
    init_from: str | None = None
    format: str = "mupd"
    use_ema: bool = True
    extra_in_channels: int = 0
    add_modalities: list = field(default_factory=list)
    freeze: list = field(default_factory=list)


@dataclass
class TrainConfig:
    output: str = "runs/run"
    seed: int = 0
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    conditions: dict[str, EncoderSpec] = field(default_factory=dict)
    vae: VAESection = field(default_factory=VAESection)
    batch: BatchSection = field(default_factory=BatchSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    total_images: int = 10_000
    ema: EMASection = field(default_factory=EMASection)
    dropout: DropoutSection = field(default_factory=DropoutSection)
    time_sampling: str = "uniform"
    precision: str = "auto"
    compile: bool = False
    parallel: str = "ddp"
    deterministic: bool = False
    align: AlignSection = field(default_factory=AlignSection)
    intervals: IntervalSection = field(default_factory=IntervalSection)
    preview: PreviewSection = field(default_factory=PreviewSection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    tensorboard: bool = True
    progress: bool = True

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        data = dict(data or {})
        base = preset_dict(data.pop("preset")) if "preset" in data else {}
        return build_typed(cls, deep_merge(base, data), "config")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "TrainConfig":
        return cls.from_dict({"preset": name, **overrides})

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> "TrainConfig":
        path = Path(path)
        if not path.exists():
            raise MupdError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise MupdError(f"{path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise MupdError(f"{path} must hold a mapping of config keys, got {type(data).__name__}")
        for item in overrides or []:
            set_dotted(data, item)
        try:
            return cls.from_dict(data)
        except MupdError as exc:
            raise MupdError(f"{path}: {exc}") from None

    def with_overrides(self, overrides: list[str]) -> "TrainConfig":
        data = self.to_dict()
        for item in overrides:
            set_dotted(data, item)
        return TrainConfig.from_dict(data)

    # --- output -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def validate(self) -> "TrainConfig":
        def check(ok, msg):
            if not ok:
                raise MupdError(msg)

        check(self.batch.global_size > 0 and self.batch.per_device > 0, "batch sizes must be positive")
        check(self.schedule.kind in ("constant", "cosine"), f"schedule.kind must be constant or cosine, got {self.schedule.kind!r}")
        check(self.time_sampling in ("uniform", "logit_normal"), f"time_sampling must be uniform or logit_normal, got {self.time_sampling!r}")
        check(self.precision in ("auto", "fp32", "bf16"), f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        check(self.parallel in ("ddp", "fsdp"), f"parallel must be ddp or fsdp, got {self.parallel!r}")
        check(self.data.source in ("folder", "shards"), f"data.source must be folder or shards, got {self.data.source!r}")
        check(self.finetune.format in ("mupd", "dit", "sit", "repa"),
              f"finetune.format must be mupd, dit, sit or repa (the checkpoint's time convention), got {self.finetune.format!r}")
        check(self.total_images > 0, "total_images must be positive (it counts images, not steps)")
        rna = self.conditions.get("rna")
        if rna is not None and rna.field == "caption":  # the field default is text's; RNA comes from shards
            rna.field = "rna_values"
        for modality, spec in self.conditions.items():
            check(not spec.trainable or modality == "rna",
                  f"conditions.{modality}.trainable: only the RNA token encoders train with the generator; "
                  f"the {modality} encoder stays frozen (drop 'trainable')")
        check(0.0 <= self.dropout.p_each <= 1.0 and 0.0 <= self.dropout.p_all <= 1.0, "dropout probabilities must lie in [0, 1]")
        self._check_model()
        return self

    def _check_model(self) -> None:
        """model.preset and model.overrides make a valid MuPDConfig (a typo fails here, at --dry-run,
        not after the data has loaded); latent size and channels are filled in from the data later."""
        from ..models.config import MuPDConfig

        try:
            MuPDConfig.from_preset(self.model.preset, attention=self.model.attention, **self.model.overrides)
        except MupdError as exc:
            raise MupdError(f"model (preset {self.model.preset!r}, overrides {self.model.overrides}): {exc}") from None

    def accumulation_steps(self, world_size: int) -> int:
        """Micro-batches per optimiser step on each device: global / (per_device x world)."""
        per_step = self.batch.per_device * world_size
        if self.batch.global_size % per_step:
            raise MupdError(
                f"batch.global_size={self.batch.global_size} is not divisible by batch.per_device="
                f"{self.batch.per_device} x world size {world_size}; change batch.per_device"
            )
        return self.batch.global_size // per_step


# --- named presets ----------------------------------------------------------------------------
PRESETS: dict[str, dict] = {
    # tests and smoke runs: a few hundred images on a CPU
    "tiny": {
        "model": {"preset": "tiny"},
        "data": {"image_size": 32},
        "batch": {"global_size": 8, "per_device": 8},
        "optim": {"lr": 1e-3},
        "total_images": 64,
        "ema": {"decay": 0.99},
        "intervals": {"log": 16},
        "preview": {"steps": 4, "per_condition": 2},
    },
    # `mupd demo`: minutes on a laptop CPU
    "demo": {
        "model": {"preset": "tiny"},
        "data": {"image_size": 64},
        "batch": {"global_size": 32, "per_device": 32},
        "optim": {"lr": 1e-3, "grad_clip": 1.0},
        "schedule": {"kind": "constant", "warmup_images": 1024},
        "total_images": 1_000_000,
        "ema": {"decay": 0.995},
        "intervals": {"log": 512},
        "preview": {"steps": 25, "guidance": 2.0, "per_condition": 8},
    },
    # one GPU, PCam-sized patches
    "S/2-256": {
        "model": {"preset": "S/2"},
        "data": {"image_size": 256},
        "batch": {"global_size": 256, "per_device": 64},
        "optim": {"lr": 1e-4},
        "total_images": 25_600_000,
        "intervals": {"log": 25_600, "preview": 1_280_000, "checkpoint": 1_280_000},
    },
    # MuPD-like: SiT-XL/2, bf16, FSDP2, 8 GPUs, notes 3.2 / 9
    "XL/2-256": {
        "model": {"preset": "XL/2", "grad_checkpointing": False},
        "data": {"image_size": 256},
        "batch": {"global_size": 256, "per_device": 32},
        "optim": {"lr": 1e-4},
        "ema": {"decay": 0.9999},
        "total_images": 128_000_000,
        "parallel": "fsdp",
        "compile": True,
        "align": {"block": 8, "weight": 0.5, "cls_weight": 0.03, "projector_dim": 2048},
        "intervals": {"log": 25_600, "preview": 2_560_000, "checkpoint": 2_560_000},
        "preview": {"method": "euler_maruyama", "steps": 250, "guidance": 2.0},
    },
}
PRESETS["XL/2-512"] = _XL512 = copy.deepcopy(PRESETS["XL/2-256"])
_XL512["data"]["image_size"] = 512
_XL512["model"]["grad_checkpointing"] = True


def preset_dict(name: str) -> dict:
    if name not in PRESETS:
        raise MupdError(f"unknown training preset {name!r}; known: {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])
