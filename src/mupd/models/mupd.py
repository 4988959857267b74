"""MuPD: a SiT/DiT latent transformer with decoupled cross-modal attention (DCA).

    model = MuPD.from_preset("tiny", modalities=("text",), cond_dims={"text": 64}, input_size=8)
    v = model(x_t, t, conditions={"text": (tokens, mask)})        # velocity, t = 1 is noise

Conditions: ``{modality: tokens | (tokens, mask)}``; tokens are (B, L, D_m) or (B, D_m) (one token),
or (B, n) scalars for a ``vector_modalities`` entry; mask is bool (B, L) or (B,), True = real. An
absent key skips that stream; a sample whose mask row is all False gets exactly zero from it.
"""

from __future__ import annotations

from collections.abc import Mapping
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

CONFIG_FORMAT = "mupd-model"


class PreparedConditions(dict):
    """Conditions validated, projected and given a K/V cache once, for many forwards (a sampling
    run). Built by :meth:`MuPD.prepare_conditions`; pass it as ``conditions`` in place of the dict.
    Valid only for the weights and batch size it was built with, and only without gradients."""

    def __init__(self, conds: dict[str, ConditionTokens], batch_size: int):
        super().__init__(conds)
        self.batch_size = batch_size


class MuPD(nn.Module):
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
                [MuPDBlock(D, config.num_heads, config.mlp_ratio, config.modalities, config.attention) for _ in range(config.depth)]
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
            elif isinstance(module, (VectorTokenizer, SharedCrossAttention)):
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

    def encode_conditions(self, conditions, batch_size: int, device, dtype) -> dict[str, ConditionTokens]:
        """Validate the ``conditions`` dict and project every present modality to model width."""
        if conditions is None:
            return {}
        if not isinstance(conditions, Mapping):
            raise MupdError(f"conditions must be a dict {{modality: tokens | (tokens, mask)}}, not {type(conditions).__name__}")
        out: dict[str, ConditionTokens] = {}
        for name, value in conditions.items():
            if value is None:
                continue
            if name not in self.config.modalities:
                raise MupdError(f"conditions[{name!r}]: this model has no {name!r} stream; its modalities are {list(self.config.modalities)}")
            tokens, mask = value if isinstance(value, (tuple, list)) else (value, None)
            tokens = self._check_tokens(name, tokens, batch_size).to(device=device, dtype=dtype)
            mask = self._check_mask(name, mask, batch_size, tokens.shape[1], device)  # L, or n entries
            embedder = self.cond_embedders[name]
            if isinstance(embedder, VectorTokenizer):  # kept factored: see ConditionTokens.vector
                out[name] = ConditionTokens.build(None, mask, vector=(tokens, embedder.weight, embedder.bias))
            else:  # a Linear to model width
                out[name] = ConditionTokens.build(embedder(tokens), mask)
        return out

    def _check_tokens(self, name: str, tokens, batch_size: int) -> torch.Tensor:
        if not torch.is_tensor(tokens) or not tokens.is_floating_point():
            raise MupdError(f"conditions[{name!r}]: expected a float tensor, got {type(tokens).__name__} {getattr(tokens, 'dtype', '')}")
        if name in self.config.vector_modalities:
            n = self.config.vector_modalities[name]
            if tokens.ndim != 2 or tokens.shape[1] != n:
                raise MupdError(f"conditions[{name!r}]: expected a (B, {n}) vector of scalars, got shape {tuple(tokens.shape)}")
        else:
            if tokens.ndim == 2:
                tokens = tokens[:, None]
            width = self.config.cond_dims[name]
            if tokens.ndim != 3 or tokens.shape[-1] != width:
                raise MupdError(
                    f"conditions[{name!r}]: expected tokens (B, L, {width}) or (B, {width}), got shape {tuple(tokens.shape)}; "
                    f"the model was built with cond_dims[{name!r}]={width}"
                )
        if tokens.shape[0] == 1 and batch_size > 1:
            tokens = tokens.expand(batch_size, *tokens.shape[1:])
        if tokens.shape[0] != batch_size:
            raise MupdError(f"conditions[{name!r}]: batch size {tokens.shape[0]} does not match the latents' {batch_size}")
        if not torch.compiler.is_compiling() and not bool(torch.isfinite(tokens).all()):
            raise MupdError(f"conditions[{name!r}] contains NaN or inf; clean the input (e.g. impute missing expression) first")
        return tokens

    @staticmethod
    def _check_mask(name: str, mask, batch_size: int, length: int, device) -> torch.Tensor | None:
        if mask is None:
            return None
        if not torch.is_tensor(mask):
            raise MupdError(f"conditions[{name!r}]: the mask must be a bool tensor, got {type(mask).__name__}")
        mask = mask.to(device=device).bool()
        if mask.ndim == 1:
            mask = mask[:, None].expand(mask.shape[0], length)
        if mask.shape[0] == 1 and batch_size > 1:
            mask = mask.expand(batch_size, mask.shape[1])
        if tuple(mask.shape) != (batch_size, length):
            raise MupdError(f"conditions[{name!r}]: mask shape {tuple(mask.shape)} does not match tokens ({batch_size}, {length}) or ({batch_size},)")
        return mask

    def _check_scales(self, scales) -> dict[str, float]:
        scales = dict(scales or {})
        for name, value in scales.items():
            if name not in self.config.modalities:
                raise MupdError(f"scales[{name!r}]: unknown modality; this model has {list(self.config.modalities)}")
            if self.config.attention == "shared" and float(value) != 1.0:
                raise MupdError("per-modality scales need attention='decoupled'; the shared ablation has one stream")
        return {k: float(v) for k, v in scales.items()}

    def _timesteps(self, t, batch_size: int, device) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float32, device=device)
        if t.ndim == 0 or t.numel() == 1:
            return t.reshape(1).expand(batch_size)
        if t.shape != (batch_size,):
            raise MupdError(f"t must be a scalar or shape ({batch_size},), got {tuple(t.shape)}")
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
        """
        cfg = self.config
        B, C, H, W = x.shape
        p = cfg.patch_size
        if C != cfg.in_channels + cfg.extra_in_channels:
            raise MupdError(
                f"latents have {C} channels; the model expects {cfg.in_channels} (+{cfg.extra_in_channels} extra input channels)"
            )
        if H % p or W % p:
            raise MupdError(f"latent size {H}x{W} is not divisible by the patch size {p}")
        t = self._timesteps(t, B, x.device)
        h = self.x_embedder(x) + self._pos_embed(H // p, W // p, x.device).to(x.dtype)
        c = self.t_embedder(1.0 - t if cfg.time_reversed else t)  # SiT weights: data at their t = 1
        if isinstance(conditions, PreparedConditions):
            if conditions.batch_size != B:
                raise MupdError(f"prepared conditions are for batch size {conditions.batch_size}, the latents have {B}")
            if torch.is_grad_enabled():
                raise MupdError("prepared conditions cache keys/values; use them under torch.no_grad() (sampling), not for training")
            conds = dict(conditions)
        else:
            conds = self.encode_conditions(conditions, B, x.device, h.dtype)
        scales = self._check_scales(scales)
        N = h.shape[1]
        if cls is not None:
            if self.cls_head is None:
                raise MupdError("cls= was given but the model has no CLS token (set cls_dim in the config)")
            if cls.shape != (B, cfg.cls_dim):
                raise MupdError(f"cls must have shape ({B}, {cfg.cls_dim}), got {tuple(cls.shape)}")
            h = torch.cat([h, self.cls_head.embed(cls.to(h.dtype))[:, None]], dim=1)
        extras: dict[str, torch.Tensor] = {}
        for index, block in enumerate(self.blocks, start=1):
            if cfg.grad_checkpointing and self.training and torch.is_grad_enabled():
                h = checkpoint(block, h, c, conds, scales, use_reentrant=False)
            else:
                h = block(h, c, conds, scales)
            if index == cfg.repa_block:
                extras["hidden"] = h[:, :N]
        if cls is not None:
            extras["cls_v"] = self.cls_head.out(self.cls_head.norm(h[:, N]))
            h = h[:, :N]
        out = self.unpatchify(self.final_layer(h, c), H // p, W // p)
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
