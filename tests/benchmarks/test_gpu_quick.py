"""benchmarks/gpu.py and gpu_check.py run their GPU code path on the CPU (``--quick``: tiny widths,
8x8 latents, 2 sampling steps), so the scripts a GPU session runs are known to work before one does."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SIZES = ("S/2", "B/2", "XL/2")
VARIANTS = ("mupd", "diffusers", "mupd_3modalities")


def _run(script: str, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_quick_run_reports_every_case(tmp_path):
    out = tmp_path / "gpu_quick.json"
    done = _run("gpu.py", "--quick", "--device", "cpu", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["quick"] is True and "not a GPU figure" in data["notes"]
    assert data["device"]["type"] == "cpu" and data["device"]["name"]
    assert data["errors"] == [] and data["skipped"] == []
    for size in SIZES:
        cases = data["train"][size]
        for variant in VARIANTS:
            case = cases[variant]
            assert "error" not in case, f"{size} {variant}: {case.get('error')}"
            for key in ("images_per_s", "step_s", "peak_memory_mb", "flops_per_image_counted", "parameters"):
                assert _positive(case[key]), f"{size} {variant} {key} = {case.get(key)}"
            assert sum(case["sdpa_kernels"].values()) > 0, f"{size} {variant}: no SDPA kernel recorded"
            assert "mfu" in case and case["mfu"] is None  # no bf16 peak for a CPU
        # diffusers' DiT is built at mupd's size: the same work per image within a few per cent
        flops = cases["mupd"]["flops_per_image_counted"] / cases["diffusers"]["flops_per_image_counted"]
        assert 0.9 < flops < 1.1, f"{size}: mupd/diffusers FLOPs per image {flops:.3f}"
        assert cases["mupd_3modalities"]["flops_per_image_counted"] > cases["mupd"]["flops_per_image_counted"]
        ratios = data["train_ratios_images_per_s"][size]
        assert set(ratios) == {"mupd_over_diffusers", "mupd_3modalities_over_diffusers", "mupd_3modalities_over_mupd"}
        assert all(_positive(r) for r in ratios.values()), ratios
    for kind, rows in (("mupd_3modalities", 4), ("diffusers_cfg", 2)):
        case = data["sample"][kind]
        assert "error" not in case, case.get("error")
        assert _positive(case["s_per_image"]) and case["steps_run"] == case["steps"] == 2
        assert case["rows_per_network_call"] == rows * case["batch"]
    assert _positive(data["sample_ratio_s_per_image_mupd_3modalities_over_diffusers_cfg"])


def test_quick_run_through_torch_compile(tmp_path):
    """The GPU default, each block compiled in place, traced by dynamo + AOTAutograd (aot_eager skips
    only the code generation a CPU would spend a minute on)."""
    out = tmp_path / "gpu_quick_compiled.json"
    done = _run("gpu.py", "--quick", "--device", "cpu", "--sizes", "S/2", "--no-sample", "--compile", "regional",
                "--compile-backend", "aot_eager", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["settings"]["compile"] == "regional" and data["errors"] == []
    assert all(_positive(data["train"]["S/2"][v]["images_per_s"]) for v in VARIANTS)


def test_gpu_check_numerics_on_cpu(tmp_path):
    out = tmp_path / "check.json"
    done = _run("gpu_check.py", "--device", "cpu", "--quick", "--only", "bf16_vs_fp32,flash_vs_math,one_rank_ddp_fsdp2",
                "--out", str(out))
    data = json.loads(out.read_text())
    assert done.returncode == 0 and data["ok"], json.dumps(data["checks"], indent=1)[-3000:]
    checks = data["checks"]
    assert 0 < checks["bf16_vs_fp32"]["relative_error"] < checks["bf16_vs_fp32"]["tolerance"]
    assert checks["flash_vs_math"]["3_modalities"]["kernels"]
    assert {"ddp", "fsdp"} <= set(checks["one_rank_ddp_fsdp2"])
