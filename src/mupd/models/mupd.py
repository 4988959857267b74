"""MuPD: a SiT/DiT latent transformer with decoupled cross-modal attention (DCA).

    model = MuPD.from_preset("tiny", modalities=("text",), cond_dims={"text": 64}, input_size=8)
    v = model(x_t, t, conditions={"text": (tokens, mask)})        # velocity, t = 1 is noise

Conditions: ``{modality: tokens | (tokens, mask)}``; tokens are (B, L, D_m) or (B, D_m) (one token),
or (B, n) scalars for a ``vector_modalities`` entry; mask is bool (B, L) or (B,), True = real. An
absent key skips that stream; a sample whose mask row is all False gets exactly zero from it.
A :class:`ConditionRows` value applies to a block of batch rows only (batched guidance).

``forward`` does not validate its inputs, so it compiles to one graph with no host syncs; call
``model.check_inputs(x_t, t, conditions)`` once where inputs enter (pipelines and ``flow.sample`` do).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..checkpoint import atomic_folder, load_into, read_json, save_tensors, write_json
from ..errors import MupdError
from .attention import ConditionTokens, SharedCrossAttention
from .blocks import ClsHead, FinalLayer, MuPDBlock
from .config import MuPDConfig
from .embeddings import ConditionProjector, PatchEmbed, TimestepEmbedder, VectorTokenizer, sincos_pos_embed_2d
from .inputs import ConditionRows, check_inputs, check_prepared, split_condition  # noqa: F401 (ConditionRows: re-exported input form)

CONFIG_FORMAT = "mupd-model"


class PreparedConditions(dict):
    """Conditions projected and given a K/V cache once, for many forwards (a sampling run). Built
    by :meth:`MuPD.prepare_conditions`; pass it as ``conditions`` in place of the dict.
    Valid only for the weights and batch size it was built with, and only without gradients."""

    def __init__(self, conds: dict[str, ConditionTokens], batch_size: int):
        super().__init__(conds)
        self.batch_size = batch_size


class MuPD(nn.Module):
    accepts_condition_rows = True  # ConditionRows values: guidance runs each stream on its rows only

    def __init__(self, config: MuPDConfig, device: torch.device | str | None = None, *, initialize: bool = True):
        """Build (and initialise) the model on ``device`` (default: torch's default device).

        Modules are created on the meta device and initialised once in place, so large presets
        build without paying for PyTorch's default init first; on ``"meta"`` nothing is allocated.
        ``initialize=False`` leaves the weights uninitialised (only for loading every tensor next).
        """
        super().__init__()
        self.config = config
        target = torch.device(device) if device is not None else torch.get_default_device()
        D = config.hidden_size
        with torch.device("meta"):
            self.x_embedder = PatchEmbed(config.patch_size, config.in_channels, D, config.extra_in_channels)
            self.t_embedder = TimestepEmbedder(D, config.time_scale, config.timestep_freq_shift)
            self.cond_embedders = nn.ModuleDict(
                {
                    m: VectorTokenizer(config.vector_modalities[m], D) if m in config.vector_modalities else ConditionProjector(config.cond_dims[m], D)
                    for m in config.modalities
                }
            )
            self.blocks = nn.ModuleList(
                [MuPDBlock(D, config.num_heads, config.mlp_ratio, config.modalities, config.attention, config.conv_mlp) for _ in range(config.depth)]
            )
            self.final_layer = FinalLayer(D, config.patch_size, config.out_channels)
            self.cls_head = ClsHead(config.cls_dim, D) if config.cls_dim else None
        self.to_empty(device=target)
        grid = config.input_size // config.patch_size
        self.register_buffer("pos_embed", sincos_pos_embed_2d(D, grid, grid, device=target)[None], persistent=False)
        if initialize and target.type != "meta":
            self.initialize_weights()

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, device=None, **overrides) -> "MuPD":
        """``MuPD.from_preset("XL/2", modalities=("image", "text", "rna"))``; see ``MuPDConfig.from_preset``."""
        return cls(MuPDConfig.from_preset(name, **overrides), device=device)

    def initialize_weights(self) -> None:
        """DiT's init: xavier Linear, N(0, 0.02) timestep MLP, zero adaLN (every gate starts closed),
        zero output heads, zero weights for extra input channels."""

        def basic(module):
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (VectorTokenizer, SharedCrossAttention, nn.Conv2d)):  # Conv2d: Mix-FFN (patch embed re-set below)
                module.reset_parameters()

        self.apply(basic)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.data.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        if self.config.extra_in_channels:
            with torch.no_grad():
                w[:, self.config.in_channels :].zero_()
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for module in self.modules():
            if hasattr(module, "adaLN_modulation"):
                nn.init.zeros_(module.adaLN_modulation[-1].weight)
                nn.init.zeros_(module.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)
        if self.cls_head is not None:
            nn.init.zeros_(self.cls_head.out.weight)
            nn.init.zeros_(self.cls_head.out.bias)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # ---- inputs ----------------------------------------------------------------------------
    @torch.no_grad()
    def prepare_conditions(self, conditions, batch_size: int) -> PreparedConditions:
        """Encode ``conditions`` once for repeated forwards at this batch size (samplers use this:
        each block's cross-attention keys/values are then computed on the first step only)."""
        param = next(self.parameters())
        conds = self.encode_conditions(conditions, batch_size, param.device, param.dtype)
        for cond in conds.values():
            cond.cache = {}
        return PreparedConditions(conds, batch_size)

    def check_inputs(self, x, t, conditions=None, *, scales=None, cls=None) -> None:
        """Validate one call's inputs, raising a one-line :class:`MupdError` that names the field.

        ``forward`` does not validate (no host syncs, nothing that breaks a ``torch.compile`` graph):
        call this once where inputs enter (pipelines, ``flow.sample``, the trainer's first step)."""
        check_inputs(self, x, t, conditions, scales=scales, cls=cls)

    def encode_conditions(self, conditions, batch_size: int, device, dtype) -> dict[str, ConditionTokens]:
        """Project every present modality to model width (no validation: see :meth:`check_inputs`).

        Only static facts steer this (which keys are present, shapes, whether a mask was given), so
        one compiled graph serves every batch with the same modalities."""
        out: dict[str, ConditionTokens] = {}
        for name, value in (conditions or {}).items():
            if value is None:
                continue
            tokens, mask, rows = split_condition(value, batch_size)
            rows_b = batch_size if rows is None else rows[1] - rows[0]
            embedder = self.cond_embedders[name]
            if tokens.ndim == 2 and not isinstance(embedder, VectorTokenizer):
                tokens = tokens[:, None]  # one token
            if tokens.shape[0] == 1 and rows_b > 1:
                tokens = tokens.expand(rows_b, *tokens.shape[1:])
            tokens = tokens.to(device=device, dtype=dtype)
            if mask is not None:
                mask = mask.to(device=device, dtype=torch.bool)
                if mask.shape[0] == 1 and rows_b > 1:
                    mask = mask.expand(rows_b, *mask.shape[1:])
            if isinstance(embedder, VectorTokenizer):  # kept factored: see ConditionTokens.vector
                out[name] = ConditionTokens.build(None, mask, dtype, vector=(tokens, embedder.weight, embedder.bias), rows=rows)
            else:  # a Linear to model width
                out[name] = ConditionTokens.build(embedder(tokens), mask, dtype, rows=rows)
        return out

    def _timesteps(self, t, batch_size: int, device) -> torch.Tensor:
        """t as fp32 (B,): the timestep embedding is computed in fp32 whatever the forward's dtype."""
        t = torch.as_tensor(t, device=device).to(torch.float32)
        if t.numel() == 1:
            return t.reshape(1).expand(batch_size)
        return t

    def _pos_embed(self, grid_h: int, grid_w: int, device) -> torch.Tensor:
        side = self.config.input_size // self.config.patch_size
        if grid_h == side and grid_w == side:
            return self.pos_embed
        return sincos_pos_embed_2d(self.config.hidden_size, grid_h, grid_w, device=device)[None]

    # ---- forward ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, t, conditions=None, *, scales=None, cls: torch.Tensor | None = None, return_extras: bool = False):
        """Velocity for latents ``x`` (B, C+extra, H, W) at times ``t`` in [0, 1] (t = 1 is noise).

        ``cls``: the noisy encoder CLS (B, cls_dim) when the model has a CLS token. With
        ``return_extras`` also returns ``{"hidden": tokens after block repa_block, "cls_v": ...}``.
        Inputs are not validated here (see :meth:`check_inputs`); the forward has no host syncs.
        """
        cfg = self.config
        B, _, H, W = x.shape
        grid = (H // cfg.patch_size, W // cfg.patch_size)
        t = self._timesteps(t, B, x.device)
        h = self.x_embedder(x) + self._pos_embed(*grid, x.device).to(x.dtype)
        c = self.t_embedder(1.0 - t if cfg.time_reversed else t)  # SiT weights: data at their t = 1
        if isinstance(conditions, PreparedConditions):
            check_prepared(conditions, B)  # static: a cache is valid for one batch size, without grad
            conds = dict(conditions)
        else:
            conds = self.encode_conditions(conditions, B, x.device, h.dtype)
        scales = {name: float(value) for name, value in (scales or {}).items()}
        N = h.shape[1]
        if cls is not None:
            h = torch.cat([h, self.cls_head.embed(cls.to(h.dtype))[:, None]], dim=1)
        extras: dict[str, torch.Tensor] = {}
        for index, block in enumerate(self.blocks, start=1):
            if cfg.grad_checkpointing and self.training and torch.is_grad_enabled():
                h = checkpoint(block, h, c, conds, scales, grid, use_reentrant=False)
            else:
                h = block(h, c, conds, scales, grid)
            if index == cfg.repa_block:
                extras["hidden"] = h[:, :N]
        if cls is not None:
            extras["cls_v"] = self.cls_head.out(self.cls_head.norm(h[:, N]))
            h = h[:, :N]
        out = self.unpatchify(self.final_layer(h, c), *grid)
        if cfg.time_reversed:  # SiT predicts data - noise; mupd's velocity is noise - data
            out = -out
        return (out, extras) if return_extras else out

    def unpatchify(self, x: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
        p, C = self.config.patch_size, self.config.out_channels
        x = x.reshape(x.shape[0], grid_h, grid_w, p, p, C)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], C, grid_h * p, grid_w * p)

    # ---- weights ---------------------------------------------------------------------------
    def save_pretrained(self, path, ema=None) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (+ ``ema.safetensors``) atomically.

        ``ema``: an :class:`mupd.train.ema.EMA` or an ``nn.Module`` with the same parameters."""
        from .. import __version__

        path = Path(path)
        with atomic_folder(path) as tmp:
            write_json(tmp / "config.json", {"format": CONFIG_FORMAT, "mupd_version": __version__, **self.config.to_dict()})
            save_tensors(tmp / "model.safetensors", self.state_dict())
            if ema is not None:
                module = ema if isinstance(ema, nn.Module) else ema.module
                save_tensors(tmp / "ema.safetensors", module.state_dict())
        return path

    @classmethod
    def config_from_folder(cls, path) -> MuPDConfig:
        file = Path(path) / "config.json"
        data = dict(read_json(file))
        fmt = data.pop("format", None)
        data.pop("mupd_version", None)
        if fmt != CONFIG_FORMAT:
            raise MupdError(f"{file}: 'format' is {fmt!r}, expected {CONFIG_FORMAT!r}; this is not a MuPD model folder")
        return MuPDConfig.from_dict(data, source=str(file))

    @classmethod
    def from_pretrained(cls, path, use_ema: bool = True, device=None) -> "MuPD":
        """Rebuild from ``config.json`` and load EMA weights when present (and ``use_ema``)."""
        path = Path(path)
        if not path.is_dir():
            raise MupdError(f"{path} is not a folder; expected a MuPD model folder written by save_pretrained")
        # no random init: load_into (strict) overwrites every parameter or raises
        model = cls(cls.config_from_folder(path), device=device, initialize=False)
        weights = path / "ema.safetensors"
        if not (use_ema and weights.exists()):
            weights = path / "model.safetensors"
        load_into(model, weights)
        return model.eval()
