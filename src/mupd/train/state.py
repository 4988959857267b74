"""``train_state/``: everything beyond the weights that an exact resume needs, without pickle.

    train_state/optimizer.safetensors   per-parameter tensors, keys "<param name>/<state key>"
    train_state/state.json              scalars: optimiser param groups and per-parameter scalar
                                        state, progress (images seen, step, epoch, position in
                                        the epoch), numpy/python seeds, mupd version
    train_state/rng.safetensors         torch CPU (and CUDA) generator states as uint8 tensors
    train_state/extra.safetensors       trainable helper modules (alignment projector ...)
    train_state/config.yaml             the resolved TrainConfig

Optimiser state is keyed by parameter *name*, not by index, so it survives wrapping changes.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..checkpoint import load_tensors, read_json, save_tensors, write_json
from ..errors import MupdError


@dataclass
class Progress:
    images_seen: int = 0
    step: int = 0
    # data position is a pure function of images_seen and the dataset size (see data.order)
    epoch: int = 0
    position_in_epoch: int = 0


def optimizer_to_flat(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> tuple[dict, dict]:
    """Split an optimiser state into named tensors and JSON scalars. ``names``: id(param) -> name."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    groups = []
    for group in optimizer.param_groups:
        hyper = {k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items() if k != "params"}
        groups.append({"hyper": hyper, "params": [names[id(p)] for p in group["params"]]})
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            name = names[id(p)]
            for key, value in state.items():
                if torch.is_tensor(value) and value.ndim > 0:
                    tensors[f"{name}/{key}"] = value
                elif torch.is_tensor(value):
                    scalars.setdefault(name, {})[key] = {"tensor": True, "value": value.item(), "dtype": str(value.dtype)}
                else:
                    scalars.setdefault(name, {})[key] = {"tensor": False, "value": value}
    return tensors, {"param_groups": groups, "scalar_state": scalars}


def optimizer_from_flat(optimizer: torch.optim.Optimizer, params: dict[str, torch.nn.Parameter], tensors: dict, meta: dict, where: Path) -> None:
    groups = meta["param_groups"]
    if len(groups) != len(optimizer.param_groups):
        raise MupdError(f"{where}: the saved optimiser has {len(groups)} parameter groups, this run builds {len(optimizer.param_groups)}; the config changed (frozen parts?)")
    for saved, group in zip(groups, optimizer.param_groups):
        own = [n for n in saved["params"]]
        if len(own) != len(group["params"]):
            raise MupdError(f"{where}: saved optimiser group holds {len(own)} parameters, this run {len(group['params'])}; the model or finetune.freeze changed")
        for key, value in saved["hyper"].items():
            group[key] = tuple(value) if isinstance(group.get(key), tuple) else value
    for name, p in params.items():
        state = {}
        for key, info in meta["scalar_state"].get(name, {}).items():
            if info["tensor"]:
                dtype = getattr(torch, info["dtype"].replace("torch.", ""))
                state[key] = torch.tensor(info["value"], dtype=dtype)
            else:
                state[key] = info["value"]
        prefix = f"{name}/"
        for key, value in tensors.items():
            if key.startswith(prefix):
                state[key[len(prefix):]] = value.to(p.device)
        if state:
            optimizer.state[p] = state


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    np_state = np.random.get_state()
    py_state = random.getstate()
    tensors["numpy_keys"] = torch.from_numpy(np.asarray(np_state[1], dtype=np.int64))
    meta = {
        "numpy": {"pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "internal": list(py_state[1]), "gauss_next": py_state[2]},
    }
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch_cpu"].to(torch.uint8))
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            if f"torch_cuda_{i}" in tensors:
                torch.cuda.set_rng_state(tensors[f"torch_cuda_{i}"].to(torch.uint8), i)
    np_meta = meta["numpy"]
    np.random.set_state(("MT19937", tensors["numpy_keys"].numpy().astype(np.uint32), np_meta["pos"], np_meta["has_gauss"], np_meta["cached_gaussian"]))
    py = meta["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))


def save_train_state(folder: Path, *, optimizer, param_names: dict[int, str], progress: Progress, config_yaml: str, extra_modules: dict[str, torch.nn.Module] | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    opt_tensors, opt_meta = optimizer_to_flat(optimizer, param_names) if optimizer is not None else ({}, None)
    if optimizer is not None:  # None under FSDP (sharded moments are not gathered; see loop.py)
        save_tensors(folder / "optimizer.safetensors", opt_tensors)
    rng_tensors, rng_meta = rng_state()
    save_tensors(folder / "rng.safetensors", rng_tensors)
    extra = {}
    for prefix, module in (extra_modules or {}).items():
        extra.update({f"{prefix}.{k}": v for k, v in module.state_dict().items()})
    if extra:
        save_tensors(folder / "extra.safetensors", extra)
    (folder / "config.yaml").write_text(config_yaml, encoding="utf-8")
    write_json(folder / "state.json", {"mupd_version": __version__, "progress": asdict(progress), "optimizer": opt_meta, "rng": rng_meta})


def load_train_state(folder: Path, *, optimizer, params: dict[str, torch.nn.Parameter], extra_modules: dict[str, torch.nn.Module] | None = None) -> Progress:
    if not (folder / "state.json").exists():
        raise MupdError(f"{folder} has no state.json; it is not a resumable checkpoint (pass a run folder written by 'mupd train')")
    meta = read_json(folder / "state.json")
    if optimizer is not None and meta["optimizer"] is not None:
        optimizer_from_flat(optimizer, params, load_tensors(folder / "optimizer.safetensors"), meta["optimizer"], folder)
    set_rng_state(load_tensors(folder / "rng.safetensors"), meta["rng"])
    if extra_modules:
        extra = load_tensors(folder / "extra.safetensors")
        for prefix, module in extra_modules.items():
            part = {k[len(prefix) + 1:]: v for k, v in extra.items() if k.startswith(prefix + ".")}
            module.load_state_dict(part)
    return Progress(**meta["progress"])
