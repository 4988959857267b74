"""Process-wide settings: device, precision, sample-data location (one place, as in scanpy).

``mupd.settings.device = "cuda"`` or the ``MUPD_DEVICE`` variable choose the device; ``"auto"``
picks CUDA when present. ``precision`` is ``"fp32"`` or ``"bf16"`` (autocast on CUDA only).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported lazily so `mupd --help` stays fast
    import torch

_PACKAGE_ROOT = Path(__file__).resolve().parent


@dataclass
class Settings:
    device: str = field(default_factory=lambda: os.environ.get("MUPD_DEVICE", "auto"))
    precision: str = field(default_factory=lambda: os.environ.get("MUPD_PRECISION", "auto"))
    num_workers: int = 0

    def torch_device(self, device: str | None = None) -> torch.device:
        import torch

        name = device or self.device
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        return torch.device(name)

    def autocast_dtype(self, device: torch.device) -> torch.dtype | None:
        """bf16 on CUDA unless precision says fp32; None (no autocast) on the CPU."""
        import torch

        if self.precision == "fp32" or device.type != "cuda":
            return None
        return torch.bfloat16

    def autocast(self, device: torch.device):
        dtype = self.autocast_dtype(device)
        if dtype is None:
            return contextlib.nullcontext()
        import torch

        return torch.autocast(device.type, dtype=dtype)


settings = Settings()


def sample_data_dir() -> Path | None:
    """The real sample data folder: ``$MUPD_SAMPLE_DATA``, else ``../shared/data`` next to the
    checkout (or the current directory's parent); None when absent."""
    candidates = []
    if os.environ.get("MUPD_SAMPLE_DATA"):
        candidates.append(Path(os.environ["MUPD_SAMPLE_DATA"]))
    candidates += [
        _PACKAGE_ROOT.parents[2] / "shared" / "data",  # src/mupd -> checkout/.. (editable install)
        Path.cwd().parent / "shared" / "data",
        Path.cwd() / "shared" / "data",
    ]
    for path in candidates:
        if (path / "README.md").exists() or (path / "pcam").is_dir():
            return path.resolve()
    return None
