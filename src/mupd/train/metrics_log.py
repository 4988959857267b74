"""``metrics.jsonl`` (one JSON object per log line, rank 0 only) and TensorBoard when installed.

On resume, lines past the checkpoint's image count (written by the run that was killed after its
last checkpoint) are dropped, so the log always describes one consistent run.
"""

from __future__ import annotations

import json
from pathlib import Path


class MetricsLog:
    def __init__(self, folder: Path, *, enabled: bool = True, tensorboard: bool = True, resume_images: int = 0):
        self.enabled = enabled
        self.path = Path(folder) / "metrics.jsonl"
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            keep = [line for line in self.path.read_text(encoding="utf-8").splitlines() if _images(line) <= resume_images]
            self.path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

                self._tb = SummaryWriter(str(Path(folder) / "tensorboard"))
            except ImportError:
                self._tb = None

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
        if self._tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "images":
                    self._tb.add_scalar(key, value, record["images"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _images(line: str) -> int:
    try:
        return int(json.loads(line).get("images", 0))
    except (ValueError, AttributeError):
        return 1 << 62  # unreadable (half-written) line: drop it


def read_metrics(folder: Path) -> list[dict]:
    path = Path(folder) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
