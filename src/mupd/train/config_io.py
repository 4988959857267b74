"""Plain data <-> typed config: nested merges, ``a.b.c=value`` overrides parsed as YAML scalars, and
building (checking) dataclasses from the dicts YAML gives (used by ``train.config``)."""

from __future__ import annotations

import dataclasses
import types
import typing

import yaml

from ..errors import MupdError


def deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in ("captions", "overrides", "kwargs"):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def set_dotted(data: dict, item: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to a nested dict."""
    if "=" not in item:
        raise MupdError(f"override {item!r} must look like section.key=value, e.g. optim.lr=3e-4")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and looks_numeric(value):
        value = float(value)  # YAML 1.1 reads "3e-4" as a string
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def looks_numeric(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def plain(obj):
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def build_typed(tp, value, where: str):
    """Build ``tp`` (dataclass, dict[str, dataclass], Optional, tuple, scalar) from plain data."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise MupdError(f"{where} must be a mapping, got {value!r}")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise MupdError(f"unknown key(s) {unknown} in {where}; valid keys: {sorted(names)}")
        return tp(**{k: build_typed(hints[k], v, f"{where}.{k}") for k, v in value.items()})
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return build_typed(args[0], value, where)
    if origin is dict or tp is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise MupdError(f"{where} must be a mapping, got {value!r}")
        args = typing.get_args(tp)
        if args and dataclasses.is_dataclass(args[1]):
            return {str(k): build_typed(args[1], v, f"{where}.{k}") for k, v in value.items()}
        return {str(k) if not isinstance(k, str) else k: v for k, v in value.items()}
    if tp is tuple or origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise MupdError(f"{where} must be a list, got {value!r}")
        return tuple(value)
    if tp is list or origin is list:
        if value is None:
            return []
        return list(value) if isinstance(value, (list, tuple)) else [value]
    if tp is bool:
        if not isinstance(value, bool):
            raise MupdError(f"{where} must be true or false, got {value!r}")
        return value
    if tp in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise MupdError(f"{where} must be a number, got {value!r}") from None
        if tp is int:
            if float(value) != int(value):
                raise MupdError(f"{where} must be a whole number, got {value!r}")
            return int(value)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            return str(value)
        return value
    return value
