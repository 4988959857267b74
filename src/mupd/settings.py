"""Process-wide settings: device, precision, CPU threads, sample-data location (one place, as in scanpy).

``mupd.settings.device = "cuda"`` or the ``MUPD_DEVICE`` variable choose the device; ``"auto"``
picks CUDA when present. ``precision`` is ``"fp32"`` or ``"bf16"`` (autocast on CUDA only).

CPU threads: ``mupd.settings.threads = 4``, ``MUPD_THREADS=4`` or ``--threads 4`` on any heavy
command (the CLI applies it before the command runs; in Python call ``apply_threads()``); an
exported ``OMP_NUM_THREADS`` is respected next; otherwise (default) the cores this process may use
(``os.sched_getaffinity``) minus those another process keeps busy right now (sampled from
``/proc/stat`` over 0.1 s). That automatic choice is re-checked every 30 s during training
(``ThreadRetuner``): threads drop when another job takes a core and come back when it leaves; a
fixed choice (``--threads``, ``MUPD_THREADS``, ``OMP_NUM_THREADS``) is never changed. Importing mupd
before torch also sets ``OMP_WAIT_POLICY=PASSIVE`` unless it is set: OpenMP threads then sleep
instead of spin-waiting.
Why: a spinning OpenMP thread on a core another job holds stalls every parallel op (2 cores, one
busy: 6.8 img/s with 2 threads vs 66.5 with 1; ``benchmarks/threads.py`` measures the policies).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported lazily so `mupd --help` stays fast
    import torch

_PACKAGE_ROOT = Path(__file__).resolve().parent

# OpenMP threads that wait by spinning steal a core another job needs and stall every parallel op on
# a busy machine; sleeping waits cost little when idle (benchmarks/threads.py). OpenMP reads this
# once, when torch loads, so it is set only if torch is not loaded yet; an explicit value wins.
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@dataclass
class Settings:
    device: str = field(default_factory=lambda: os.environ.get("MUPD_DEVICE", "auto"))
    precision: str = field(default_factory=lambda: os.environ.get("MUPD_PRECISION", "auto"))
    num_workers: int = 0
    threads: int | None = field(default_factory=lambda: _env_threads())

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


def enable_tf32(device) -> None:
    """TF32 tensor cores for fp32 matmuls and convolutions on CUDA (about 8x the fp32 rate on
    Ampere and later, with a 10-bit mantissa that training tolerates); bf16 autocast paths are
    unaffected. A no-op off CUDA: ``set_float32_matmul_precision`` also reaches oneDNN on the CPU,
    whose fp32 results (and the CPU tests' bit-exact resume) must stay exact."""
    import torch

    if torch.device(device).type == "cuda":
        torch.set_float32_matmul_precision("high")  # not fp32_precision="tf32": reading allow_tf32 after that raises


_SET_BY_US: dict = {}  # OMP_NUM_THREADS written by apply_threads is not a user's choice; "auto": threads were not fixed


def _env_threads() -> int | str | None:
    value = os.environ.get("MUPD_THREADS", "").strip()
    if not value:
        return None
    return int(value) if value.isdigit() else value  # a bad value is refused when threads are resolved


settings = Settings()


def available_cores() -> int:
    """CPUs this process may run on (its affinity mask; containers and taskset narrow it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _cpu_times(cpus: set[int]) -> dict[int, tuple[int, int]]:
    """(idle, total) jiffies per allowed CPU from /proc/stat."""
    out = {}
    with open("/proc/stat") as fh:
        for line in fh:
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            name, *values = line.split()
            cpu = int(name[3:])
            if cpu in cpus:
                numbers = [int(v) for v in values[:8]]
                out[cpu] = (numbers[3] + numbers[4], sum(numbers))  # idle + iowait, all
    return out


def busy_cores(interval: float = 0.1) -> float:
    """How many of this process's cores other work keeps busy now (0 when unknown)."""
    try:
        cpus = os.sched_getaffinity(0)
        before = _cpu_times(cpus)
        time.sleep(interval)
        after = _cpu_times(cpus)
    except (AttributeError, OSError, ValueError):
        return 0.0
    return _busy_between(before, after)


def _busy_between(before: dict, after: dict) -> float:
    """Busy cores (all processes) between two ``_cpu_times`` snapshots."""
    busy = 0.0
    for cpu, (idle, total) in after.items():
        d_total = total - before.get(cpu, (idle, total))[1]
        d_idle = idle - before.get(cpu, (idle, total))[0]
        if d_total > 0:
            busy += 1.0 - d_idle / d_total
    return busy


def default_threads() -> int:
    """The cores this process may use that are not busy with other work now (at least 1)."""
    cores = available_cores()
    return max(1, min(cores, int(cores - busy_cores() + 0.5)))


def resolve_threads(threads: int | None = None) -> int:
    """``threads`` if given, else ``settings.threads`` / ``MUPD_THREADS``, else an ``OMP_NUM_THREADS``
    the user exported, else ``default_threads()``."""
    from .errors import MupdError

    chosen = threads if threads is not None else settings.threads
    _SET_BY_US["auto"] = False
    if chosen is None:
        omp = os.environ.get("OMP_NUM_THREADS", "").strip()
        if omp.isdigit() and int(omp) > 0 and not _SET_BY_US.get("omp"):
            return int(omp)
        _SET_BY_US["auto"] = True
        return default_threads()
    if not isinstance(chosen, int) or chosen < 1:
        where = "--threads" if threads is not None else "mupd.settings.threads / $MUPD_THREADS"
        raise MupdError(f"{where} must be a positive integer (CPU threads), not {chosen!r}")
    return chosen


def apply_threads(threads: int | None = None, *, import_torch: bool = True) -> int:
    """Set torch's intra-op threads by ``resolve_threads``; returns the number used. Before torch is
    imported (and with ``import_torch=False``) this only sets ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``,
    which torch reads when it loads, so a command that fails its input checks never pays for torch."""
    n = resolve_threads(threads)
    if "torch" not in sys.modules and not import_torch:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(n)
        _SET_BY_US["omp"] = True
        return n
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


class ThreadRetuner:
    """Re-runs the automatic thread choice during a long loop: call it every step; at most every
    ``every`` seconds it measures, from ``/proc/stat`` and this process's own CPU time since the last
    look, how many cores other work keeps busy, and sets torch's threads to the rest. It does
    nothing when the threads were fixed by the user (or by ``deterministic`` training, whose
    bit-exact resume needs one thread count throughout). Why: the choice made at start goes stale
    when another job starts or ends, and OpenMP threads on a busy core stall every op."""

    def __init__(self, every: float = 30.0, enabled: bool = True):
        self.every, self.enabled, self._last = every, enabled, None

    def __call__(self) -> int | None:
        """The new thread count when it changed, else None."""
        if not (self.enabled and _SET_BY_US.get("auto")):
            return None
        now = time.monotonic()
        if self._last is not None and now - self._last[0] < max(self.every, 0.5):  # /proc/stat counts in 10 ms ticks
            return None
        try:
            snapshot = (now, time.process_time(), _cpu_times(os.sched_getaffinity(0)))
        except (AttributeError, OSError, ValueError):
            self.enabled = False  # no /proc/stat (macOS, Windows): keep the start's choice
            return None
        last, self._last = self._last, snapshot
        if last is None:
            return None
        others = max(0.0, _busy_between(last[2], snapshot[2]) - (snapshot[1] - last[1]) / max(now - last[0], 1e-9))
        cores = available_cores()
        n = max(1, min(cores, int(cores - others + 0.5)))
        import torch

        if n == torch.get_num_threads():
            return None
        torch.set_num_threads(n)
        return n


def add_threads_argument(parser) -> None:
    """``--threads N`` for a heavy command (the CLI root applies it before the command runs)."""
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads (default: $MUPD_THREADS, else the cores this process may use that are not busy, "
                             "re-checked every 30 s while training)")


def cache_dir() -> Path:
    """mupd's user cache folder: ``$MUPD_CACHE``, else ``~/.cache/mupd`` (feature statistics, extracted models)."""
    return Path(os.environ.get("MUPD_CACHE") or Path.home() / ".cache" / "mupd")


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
