"""Load the backbone weights of a public DiT / SiT checkpoint into MuPD.

Two key layouts are understood:

* ``"dit"``: facebookresearch DiT / willisma SiT / REPA ``models.py`` (``x_embedder.proj``,
  ``t_embedder.mlp``, ``y_embedder.embedding_table``, ``blocks.N.attn.qkv``, ``blocks.N.mlp.fc1``,
  ``blocks.N.adaLN_modulation.1``, ``final_layer.linear``, ``final_layer.adaLN_modulation.1``).
* ``"diffusers"``: ``diffusers.DiTTransformer2DModel`` (``pos_embed.proj``,
  ``transformer_blocks.N.norm1.emb...``, ``attn1.to_q/k/v``, ``ff.net``, ``proj_out_1/2``).

What maps and what is dropped:

* **Time and velocity: the checkpoint's convention** (``CONVENTIONS``; build the model with
  :func:`convention_config` and pass the same ``convention`` to :func:`load_dit_weights`). mupd takes
  t in [0, 1] with t = 1 noise, ``x_t = (1 - t) x0 + t eps`` and velocity ``eps - x0``.

  - ``"dit"`` (facebookresearch DiT, diffusers): timesteps ``k`` in 0..999 (999 = noise), so
    ``time_scale=1000`` and mupd's ``t = k/1000``. DiT was trained as a DDPM (epsilon/sigma
    prediction): the weights load exactly, their *meaning* is what it was.
  - ``"sit"`` (willisma/SiT, linear path): t in [0, 1] unscaled with **data at t = 1**
    (``x_t = t x1 + (1 - t) eps``) and the model predicts ``x1 - eps``. So ``time_scale=1`` and
    ``time_reversed=True``: the network sees ``1 - t`` and its output is negated.
  - ``"repa"`` (sihyun-yu/REPA, linear path): t in [0, 1] unscaled, ``x_t = (1 - t) x + t eps``,
    target ``eps - x``: mupd's own direction, so ``time_scale=1`` only.

  DiT/SiT/REPA use the sinusoid with ``timestep_freq_shift=0``; diffusers' DiT uses
  ``downscale_freq_shift=1`` (``timestep_freq_shift=1``, e.g. through :func:`config_from_diffusers`).
* **Class label.** DiT adds a class embedding to the time embedding. mupd has no class table: pass
  ``class_label=k`` to fold row k (e.g. the null class 1000 for an unconditional model) into the
  time MLP's output bias, which is exact; with ``class_label=None`` the class embedding is dropped.
* **Learned sigma.** When the checkpoint predicts 2C channels (mean and variance), only the first
  ``out_channels`` (the mean / velocity part) of the final layer are kept.
* **Fixed position embedding** is recomputed (identical sin-cos), not loaded.
* **Per-block time embedders (diffusers).** diffusers stores one copy per block; converted DiT
  checkpoints hold identical copies. They must be identical (mupd shares one); otherwise an error.
* Cross-attention streams, condition projections, the CLS head and extra input channels are not in
  a DiT checkpoint: they keep their (zero-gated) initial values, so the converted model with no
  conditions computes exactly what the DiT computes.
* LayerNorm eps: mupd uses 1e-6 everywhere (DiT). diffusers' ``norm_eps`` (default 1e-5) applies to
  the MLP norm; checkpoints with 1e-5 load fine and differ by ~1e-5 relative.
"""

from __future__ import annotations

import re

import torch

from ..errors import MupdError
from .config import MuPDConfig

LAYOUTS = ("dit", "diffusers")
# checkpoint convention -> the MuPDConfig time fields that reproduce it (see the module docstring)
CONVENTIONS = {
    "dit": {"time_scale": 1000.0, "time_reversed": False},
    "sit": {"time_scale": 1.0, "time_reversed": True},
    "repa": {"time_scale": 1.0, "time_reversed": False},
}


def convention_config(convention: str, layout: str = "dit") -> dict:
    """MuPDConfig overrides (time scale, direction, sinusoid shift) for a checkpoint's convention."""
    if convention not in CONVENTIONS:
        raise MupdError(f"convention must be one of {sorted(CONVENTIONS)}, not {convention!r}")
    if layout == "diffusers" and convention != "dit":
        raise MupdError(f"a diffusers-layout checkpoint is a DiT (convention 'dit'), not {convention!r}")
    return {**CONVENTIONS[convention], "timestep_freq_shift": 1.0 if layout == "diffusers" else 0.0}


def config_from_diffusers(config: dict, **overrides) -> MuPDConfig:
    """A MuPDConfig with the backbone of a ``DiTTransformer2DModel`` config (no condition streams
    unless ``modalities=`` is given)."""
    if config.get("norm_type", "ada_norm_zero") != "ada_norm_zero":
        raise MupdError(f"only ada_norm_zero DiT models convert; this one has norm_type={config.get('norm_type')!r}")
    if config.get("activation_fn", "gelu-approximate") != "gelu-approximate":
        raise MupdError(f"only GELU-tanh MLPs convert; this one has activation_fn={config.get('activation_fn')!r}")
    heads = int(config.get("num_attention_heads", 16))
    base = dict(
        hidden_size=heads * int(config.get("attention_head_dim", 72)),
        num_heads=heads,
        depth=int(config.get("num_layers", 28)),
        patch_size=int(config.get("patch_size", 2)),
        input_size=int(config.get("sample_size", 32)),
        in_channels=int(config.get("in_channels", 4)),
        modalities=(),
        time_scale=1000.0,
        timestep_freq_shift=1.0,
    )
    base.update(overrides)
    return MuPDConfig.from_dict(base, source="config_from_diffusers")


def read_dit_checkpoint(path) -> dict[str, torch.Tensor]:
    """The state dict of a DiT/SiT/diffusers checkpoint file or folder, without unpickling code.

    ``.safetensors`` files (or a diffusers folder with ``diffusion_pytorch_model.safetensors``) are
    read directly; ``.pt``/``.pth`` with ``torch.load(weights_only=True)``, taking ``"ema"`` (DiT/SiT
    training checkpoints), ``"model"`` or ``"state_dict"`` when the file holds a wrapper dict."""
    from pathlib import Path

    from ..checkpoint import load_tensors

    path = Path(path)
    if path.is_dir():
        candidates = sorted(path.glob("*.safetensors")) + sorted(path.glob("transformer/*.safetensors"))
        if not candidates:
            raise MupdError(f"{path} holds no .safetensors file; pass the checkpoint file itself")
        path = candidates[0]
    if not path.exists():
        raise MupdError(f"{path} does not exist")
    if path.suffix == ".safetensors":
        return load_tensors(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a user-fixable input problem
        raise MupdError(f"{path} could not be read as a weights-only torch checkpoint ({exc}); convert it to safetensors") from None
    for key in ("ema", "model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise MupdError(f"{path} does not hold a flat state dict of tensors")
    return state


def _diffusers_to_dit(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers DiT state dict to the DiT layout (q/k/v fused, embedders de-duplicated)."""
    out: dict[str, torch.Tensor] = {}
    emb = "transformer_blocks.0.norm1.emb."
    for key, value in state.items():
        m = re.match(r"transformer_blocks\.(\d+)\.norm1\.emb\.(.+)", key)
        if m and m.group(1) != "0":
            reference = state.get(emb + m.group(2))
            if reference is None or reference.shape != value.shape or not torch.equal(reference, value):
                raise MupdError(
                    f"diffusers checkpoint: '{key}' differs from block 0's copy; mupd shares one time "
                    "embedder across blocks, so it cannot represent per-block embedders"
                )
    renames = {
        "pos_embed.proj.weight": "x_embedder.proj.weight",
        "pos_embed.proj.bias": "x_embedder.proj.bias",
        emb + "timestep_embedder.linear_1.weight": "t_embedder.mlp.0.weight",
        emb + "timestep_embedder.linear_1.bias": "t_embedder.mlp.0.bias",
        emb + "timestep_embedder.linear_2.weight": "t_embedder.mlp.2.weight",
        emb + "timestep_embedder.linear_2.bias": "t_embedder.mlp.2.bias",
        emb + "class_embedder.embedding_table.weight": "y_embedder.embedding_table.weight",
        "proj_out_1.weight": "final_layer.adaLN_modulation.1.weight",
        "proj_out_1.bias": "final_layer.adaLN_modulation.1.bias",
        "proj_out_2.weight": "final_layer.linear.weight",
        "proj_out_2.bias": "final_layer.linear.bias",
    }
    for src, dst in renames.items():
        if src in state:
            out[dst] = state[src]
    blocks = sorted({int(m.group(1)) for k in state if (m := re.match(r"transformer_blocks\.(\d+)\.", k))})
    for i in blocks:
        p = f"transformer_blocks.{i}."
        q = f"blocks.{i}."
        try:
            for kind in ("weight", "bias"):
                out[q + f"attn.qkv.{kind}"] = torch.cat([state[p + f"attn1.to_{n}.{kind}"] for n in "qkv"], dim=0)
                out[q + f"attn.proj.{kind}"] = state[p + f"attn1.to_out.0.{kind}"]
                out[q + f"mlp.fc1.{kind}"] = state[p + f"ff.net.0.proj.{kind}"]
                out[q + f"mlp.fc2.{kind}"] = state[p + f"ff.net.2.{kind}"]
                out[q + f"adaLN_modulation.1.{kind}"] = state[p + f"norm1.linear.{kind}"]
        except KeyError as exc:
            raise MupdError(f"diffusers checkpoint: tensor {exc.args[0]!r} is missing; is this a DiTTransformer2DModel state dict?") from None
    return out


def load_dit_weights(
    model,
    state_dict: dict[str, torch.Tensor],
    layout: str = "diffusers",
    *,
    class_label: int | None = None,
    strict_time_embedding: bool = True,
    convention: str = "dit",
) -> dict[str, list[str]]:
    """Copy a DiT/SiT/REPA backbone into ``model`` (a :class:`~mupd.models.mupd.MuPD`) in place.

    ``convention`` (``"dit"``, ``"sit"``, ``"repa"``) says how the checkpoint was trained; the model
    must have been built with :func:`convention_config` of it (checked). Returns ``{"loaded": mupd
    keys written, "dropped": checkpoint keys not used, "kept": mupd keys left at their initial
    values}``. See the module docstring for the time/velocity mapping and what is dropped.
    """
    cfg = model.config
    if layout not in LAYOUTS:
        raise MupdError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    want = convention_config(convention, layout)
    have = {k: getattr(cfg, k) for k in want}
    if strict_time_embedding and have != want:
        raise MupdError(
            f"a {convention!r} checkpoint in the {layout!r} layout needs {want} in the MuPD config (it has {have}); "
            "rebuild the model with mupd.models.convert.convention_config(convention, layout)"
        )
    state = {k.removeprefix("module."): v for k, v in state_dict.items()}
    if "state_dict" in state or "ema" in state:
        raise MupdError("pass the model's state dict itself (e.g. checkpoint['ema'] for DiT/SiT training checkpoints)")
    normed = sorted(k for k in state if re.search(r"\.attn\.(q_norm|k_norm)\.", k))
    if normed:
        raise MupdError(f"the checkpoint uses QK-norm ({normed[0]}, REPA qk_norm=True); mupd's attention has none, so it cannot load it")
    source = _diffusers_to_dit(state) if layout == "diffusers" else dict(state)
    original_keys = set(state)

    own = model.state_dict()
    new: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in source.items():
        if key == "pos_embed" or key.startswith("y_embedder.") or key not in own:
            dropped.append(key)
            continue
        new[key] = _fit_tensor(key, value, own[key], cfg, dropped)

    if class_label is not None:
        table = source.get("y_embedder.embedding_table.weight")
        if table is None:
            raise MupdError("class_label was given but the checkpoint has no class embedding table")
        if not 0 <= class_label < table.shape[0]:
            raise MupdError(f"class_label {class_label} is outside the table's {table.shape[0]} rows")
        new["t_embedder.mlp.2.bias"] = new["t_embedder.mlp.2.bias"] + table[class_label].to(new["t_embedder.mlp.2.bias"].dtype)

    backbone = [k for k in own if _is_backbone(k)]
    missing = [k for k in backbone if k not in new]
    if missing:
        raise MupdError(f"the {layout!r} checkpoint lacks backbone tensors {missing[:5]}; depth or layout mismatch?")
    model.load_state_dict(new, strict=False)
    if layout == "diffusers":
        used = {"transformer_blocks", "pos_embed", "proj_out_1", "proj_out_2"}
        dropped += sorted(k for k in original_keys if k.split(".")[0] not in used)
    return {"loaded": sorted(new), "dropped": dropped, "kept": sorted(k for k in own if k not in new)}


def _fit_tensor(key: str, value: torch.Tensor, target: torch.Tensor, cfg, dropped: list[str]) -> torch.Tensor:
    """One checkpoint tensor shaped for the mupd model: extra input channels zero-padded, DiT's
    learned-sigma output rows dropped; any other shape mismatch is an error."""
    if key == "x_embedder.proj.weight" and value.shape[1] != target.shape[1]:
        if value.shape[1] != cfg.in_channels:
            raise MupdError(f"checkpoint '{key}' has {value.shape[1]} input channels; the model has in_channels={cfg.in_channels}")
        padded = torch.zeros_like(target)
        padded[:, : value.shape[1]] = value  # extra input channels stay zero
        value = padded
    elif key.startswith("final_layer.linear.") and value.shape[0] != target.shape[0]:
        p2 = cfg.patch_size**2
        if value.shape[0] % p2 or value.shape[0] // p2 < cfg.out_channels:
            raise MupdError(f"checkpoint '{key}' has shape {tuple(value.shape)}; cannot take {cfg.out_channels} output channels from it")
        c_src = value.shape[0] // p2  # rows are ordered (p, q, channel): keep the first channels
        value = value.reshape(p2, c_src, *value.shape[1:])[:, : cfg.out_channels].reshape(target.shape)
        dropped.append(f"{key} (learned-sigma channels {cfg.out_channels}..{c_src - 1})")
    if value.shape != target.shape:
        raise MupdError(
            f"checkpoint tensor for '{key}' has shape {tuple(value.shape)} but the model expects {tuple(target.shape)}; "
            f"the checkpoint's size does not match the preset (hidden_size={cfg.hidden_size}, depth={cfg.depth})"
        )
    return value.to(target.dtype)


def _is_backbone(key: str) -> bool:
    if key.startswith(("x_embedder.", "t_embedder.", "final_layer.")):
        return True
    return bool(re.match(r"blocks\.\d+\.(attn|mlp|adaLN_modulation)\.", key))
