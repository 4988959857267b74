"""The generative backbone: MuPD (SiT/DiT + decoupled cross-modal attention), its config and presets."""

from .config import MuPDConfig, preset_names

__all__ = ["MuPD", "MuPDConfig", "preset_names"]


def __getattr__(name: str):
    # MuPD imports torch; the config alone does not, so `mupd train --dry-run` can check a model
    # config and fail in well under a second
    if name == "MuPD":
        from .mupd import MuPD

        return MuPD
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
