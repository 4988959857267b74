"""Pieces shared by ``benchmarks/gpu.py`` and ``benchmarks/gpu_check.py``: the device and its dense
bf16 peak, per-case peak memory, which SDPA kernels actually ran, FLOP counts, and the two networks
(mupd's MuPD and diffusers' DiTTransformer2DModel) built at the same size with their inputs.
"""

from __future__ import annotations

import os
import platform
import re
import resource
import threading
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

# Dense (no 2:4 sparsity) bf16 tensor-core peak in TFLOP/s from the vendors' data sheets, matched
# as a substring of torch.cuda.get_device_name(); the first match wins, so specific names come first.
# None = known device without a usable figure (no bf16 tensor cores, or no figure we trust).
PEAK_BF16_TFLOPS: list[tuple[str, float | None]] = [
    ("GH200", 989.0), ("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H800", 989.0),
    ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("A10G", None), ("A10", 125.0), ("L40S", 362.0),
    ("L40", 181.0), ("L4", 121.0), ("MI300X", 1307.0), ("V100", None), ("T4", None),
]

# Flash first, memory-efficient where a mask rules flash out; math stays enabled only as the last
# resort (so an odd shape does not crash the run), and the kernels that actually ran are recorded.
FAST_SDPA = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]

# Condition shapes as in configs/mupd-XL2-256.yaml: Virchow2 CLS (1280), text tokens (77 x 1024,
# CLIP-length captions), bulk RNA as 331 SurvPath pathway scores (a vector modality, one token each).
IMAGE_WIDTH, TEXT_TOKENS, TEXT_WIDTH, RNA_PATHWAYS = 1280, 77, 1024, 331
NULL_CLASS = 1000  # diffusers DiT: label index num_embeds_ada_norm is the CFG "no class" embedding


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


def peak_bf16_tflops(name: str) -> tuple[float | None, str | None]:
    """(peak, the table entry that matched) for a device name; (None, None) when unknown."""
    for key, peak in PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return peak, key
    return None, None


def device_info(device: torch.device, peak_override: float | None = None) -> dict:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name = torch.cuda.get_device_name(device)
        peak, matched = peak_bf16_tflops(name)
        info = {"name": name, "type": "cuda", "compute_capability": f"{props.major}.{props.minor}",
                "multiprocessors": props.multi_processor_count, "memory_gib": round(props.total_memory / 2**30, 1)}
    else:
        name = f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} core(s), {torch.get_num_threads()} torch thread(s)"
        peak, matched = None, None
        info = {"name": name, "type": "cpu", "load_average": os.getloadavg()}
    if peak_override:
        peak, matched = peak_override, "--peak-tflops"
    return info | {"peak_bf16_tflops": peak, "peak_source": matched}


class PeakMemory:
    """Peak memory of the enclosed work in MiB: ``torch.cuda.max_memory_allocated`` (reset on entry)
    on CUDA; on the CPU the process's resident set, polled every 10 ms (ru_maxrss never resets)."""

    def __init__(self, device: torch.device):
        self.device, self.peak_mb, self._stop = device, 0.0, threading.Event()

    @property
    def kind(self) -> str:
        return "torch.cuda.max_memory_allocated" if self.device.type == "cuda" else "process RSS (polled)"

    def _rss_mb(self) -> float:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except OSError:  # not Linux: the process high-water mark
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _poll(self):
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self._rss_mb())
            self._stop.wait(0.01)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self.peak_mb, self._rss_mb())
        return False


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int = 1) -> float:
    """Seconds for ``repeats`` calls of ``fn``, with the device drained before and after."""
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return time.perf_counter() - start


_SDPA_OPS = {  # forward aten op -> kernel family (the backward ops are not counted)
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash (cpu)",
    "aten::_scaled_dot_product_efficient_attention": "efficient",
    "aten::_scaled_dot_product_cudnn_attention": "cudnn",
    "aten::_scaled_dot_product_attention_math": "math",
}


def sdpa_kernels_ran(fn) -> dict[str, int]:
    """Run ``fn`` once under the profiler and count the SDPA forward kernels it called, by family."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    counts: dict[str, int] = {}
    for event in prof.key_averages():
        family = _SDPA_OPS.get(event.key)
        if family:
            counts[family] = counts.get(family, 0) + event.count
    return counts


def count_flops(fn) -> int:
    """FLOPs ``fn`` executes (matmuls, convolutions, attention; forward and backward), counted by
    ``torch.utils.flop_counter`` with attention on the math path so that every backend is counted."""
    from torch.utils.flop_counter import FlopCounterMode

    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def formula_train_flops(parameters: int, tokens: int, depth: int, width: int, key_lengths: list[int]) -> float:
    """6 x parameters x image tokens (forward + backward of every weight on every token) plus attention:
    per attention layer 12 x tokens x keys x width (QK^T and AV, 2 FLOPs per multiply-add, x3 for
    training). ``key_lengths``: the key count of each attention layer type in one block."""
    return 6.0 * parameters * tokens + 12.0 * depth * tokens * width * sum(key_lengths)


# ---- the networks and their inputs --------------------------------------------------------------
def build_mupd(preset: str, latent: int, device, with_modalities: bool, overrides: dict):
    from mupd import MuPD

    kwargs = dict(input_size=latent, **overrides)
    if with_modalities:
        kwargs.update(modalities=("image", "text"), vector_modalities={"rna": RNA_PATHWAYS},
                      cond_dims={"image": IMAGE_WIDTH, "text": TEXT_WIDTH})
    else:
        kwargs.update(modalities=())
    return MuPD.from_preset(preset, device=device, **kwargs)


def build_dit(cfg, device):
    """diffusers' DiT at MuPD config ``cfg``'s size: class-conditional (1000 classes + null), no learned
    sigma (out_channels = in_channels, as mupd), LayerNorm eps 1e-6 as DiT's reference code."""
    from diffusers import DiTTransformer2DModel

    with torch.device(device):
        return DiTTransformer2DModel(
            num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim, in_channels=cfg.in_channels,
            out_channels=cfg.out_channels, num_layers=cfg.depth, sample_size=cfg.input_size, patch_size=cfg.patch_size,
            num_embeds_ada_norm=1000, norm_eps=1e-6,
        )


def make_conditions(batch: int, device, generator: torch.Generator) -> dict:
    """Image (1 token), text (77 tokens, 8..77 of them real, so masked) and RNA (331 scores)."""
    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(device)

    lengths = torch.randint(8, TEXT_TOKENS + 1, (batch,), generator=generator)
    text_mask = (torch.arange(TEXT_TOKENS)[None] < lengths[:, None]).to(device)
    return {"image": randn(batch, IMAGE_WIDTH), "text": (randn(batch, TEXT_TOKENS, TEXT_WIDTH), text_mask),
            "rna": randn(batch, RNA_PATHWAYS)}


def first_rows(conditions: dict | None, n: int) -> dict | None:
    if conditions is None:
        return None
    return {k: tuple(t[:n] for t in v) if isinstance(v, tuple) else v[:n] for k, v in conditions.items()}


def dit_velocity(dit, labels: torch.Tensor):
    """diffusers' DiT behind mupd's ``model(x_t, t, conditions)`` call (DiT's time runs 0..1000)."""
    def forward(x, t, conditions=None):
        return dit(x, timestep=1000.0 * t, class_labels=labels[: x.shape[0]]).sample
    return forward


class GuidedDiT(torch.nn.Module):
    """Classifier-free guidance for diffusers' DiT in one batched forward (class | null class), so
    mupd's ``sample`` integrates it exactly as it integrates MuPD."""

    def __init__(self, dit, labels: torch.Tensor, scale: float):
        super().__init__()
        self.dit, self.labels, self.scale = dit, labels, scale

    def forward(self, x, t, conditions=None):
        labels = torch.cat([self.labels, torch.full_like(self.labels, NULL_CLASS)])
        out = self.dit(torch.cat([x, x]), timestep=1000.0 * torch.cat([t, t]), class_labels=labels).sample.float()
        cond, uncond = out.chunk(2)
        return uncond + self.scale * (cond - uncond)


def perturb_(model: torch.nn.Module, std: float = 0.02, seed: int = 0) -> None:
    """Give every zero-initialised weight (adaLN gates, output heads) small random values, so that a
    numerical comparison compares something (a fresh DiT outputs exactly zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn(p.shape, generator=g).to(p.device, p.dtype))


def compile_model(model: torch.nn.Module, mode: str, backend: str) -> None:
    """``regional``: compile each transformer block in place (identical blocks share one compiled graph,
    so compile time does not grow with depth); ``full``: the whole module; ``none``: eager."""
    if mode == "none":
        return
    if mode == "full":
        model.compile(backend=backend, dynamic=False)
        return
    blocks = getattr(model, "blocks", None) or getattr(model, "transformer_blocks")
    for block in blocks:
        block.compile(backend=backend, dynamic=False)
