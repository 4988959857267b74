"""The generative backbone: MuPD (SiT/DiT + decoupled cross-modal attention), its config and presets."""

from .config import MuPDConfig, preset_names
from .mupd import MuPD

__all__ = ["MuPD", "MuPDConfig", "preset_names"]
