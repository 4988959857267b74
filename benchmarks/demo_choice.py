"""What should ``mupd demo`` use by default? Runs demo configurations at *equal images seen* (the
machine is shared, so wall-clock is reported as throughput, not used as the stopping rule) and
records, per configuration: throughput, FID of generated and of reconstructed patches vs held-out
real PCam (demo classifier features, 95 % CIs), the share of generations recognised as the
requested class, and the sample grid. Writes ``benchmarks/results/demo_choice.json`` and
``benchmarks/results/demo_choice/<name>/samples.png``.

    python benchmarks/demo_choice.py --images 16000 --only taef2-96,trained-64
    python benchmarks/demo_choice.py --sampler-sweep RUN/checkpoint --only heun20,shift3 --eval-samples 200
    python benchmarks/demo_choice.py --denoising-diagnostic RUN/checkpoint

The second form re-samples one trained demo model (its pipeline folder) with each sampler in
``SAMPLERS`` (no retraining) and records ``<run folder>+<sampler>`` entries; the same classifier (trained
on the demo's training patches, 600 steps) and the same held-out patches serve every sampler. The
third writes ``demo_choice/denoising_diagnostic.jpg``: held-out real latents noised to t and denoised
by the model, which shows at which noise level the samples stop looking like tissue.

TAEF2 latents of the training patches are encoded once per image size and shared between
configurations (the trained autoencoder is retrained each time it is used).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

CONFIGS = {
    "trained-64": {"autoencoder": "trained", "image_size": 64, "autoencoder_seconds": 90},  # the old default's share
    "taef2-64": {"autoencoder": "taef2", "image_size": 64},
    "taef2-96": {"autoencoder": "taef2", "image_size": 96},
    "taef2-96-wide": {"autoencoder": "taef2", "image_size": 96, "model": {"depth": 6, "hidden_size": 192, "num_heads": 6}},
    "taef2-96-lr2e-3": {"autoencoder": "taef2", "image_size": 96, "lr": 2e-3},
    "taef2-96-bs64": {"autoencoder": "taef2", "image_size": 96, "batch_size": 64, "lr": 2e-3},
    "taef2-96-w256": {"autoencoder": "taef2", "image_size": 96, "model": {"depth": 6, "hidden_size": 256, "num_heads": 8}},
    "taef2-96-d8": {"autoencoder": "taef2", "image_size": 96, "model": {"depth": 8, "hidden_size": 128, "num_heads": 4}},
    # equal generator CPU time as 45k images of the default (train-step cost ratios 2.58x, 1.80x, same process)
    "taef2-96-p1w96": {"autoencoder": "taef2", "image_size": 96, "model": {"depth": 4, "hidden_size": 96, "num_heads": 4, "patch_size": 1}},
    "taef2-96-p2w192": {"autoencoder": "taef2", "image_size": 96, "model": {"depth": 4, "hidden_size": 192, "num_heads": 6}},
    # SANA's Mix-FFN at patch 1: 4x the CPU per image; nucleus-like structure at 200,000 images (README)
    "taef2-96-p1-mixffn": {"autoencoder": "taef2", "image_size": 96,
                           "model": {"depth": 4, "hidden_size": 128, "num_heads": 4, "patch_size": 1, "conv_mlp": True}},
}

SAMPLERS = {  # overrides of mupd.train.demo.DEMO_SAMPLER
    "heun20": {"schedule": "linear"},
    "shift3": {"schedule": "time_shift", "shift": 3.0},
    "shift6": {"schedule": "time_shift", "shift": 6.0},
    "heun40": {"steps": 40},
    "sde40": {"method": "euler_maruyama", "steps": 40},
    "sde40-shift3": {"method": "euler_maruyama", "steps": 40, "schedule": "time_shift", "shift": 3.0},
    "g1.5": {"guidance": 1.5},
    "g3": {"guidance": 3.0},
    "g4": {"guidance": 4.0},
    "g3-interval": {"guidance": 3.0, "guidance_interval": [0.1, 0.9]},
    "sde40-g3": {"method": "euler_maruyama", "steps": 40, "guidance": 3.0},
}


def _share_encodings():
    """Encode TAEF2 latents once per pixel tensor shape (the weights are fixed)."""
    from mupd.train import demo

    original, cache = demo._encode_within, {}

    def cached(vae, pixels, **kw):
        if vae.kind != "taef2":
            return original(vae, pixels, **kw)
        key = tuple(pixels.shape)
        if key not in cache:
            kw["deadline"] = float("inf")
            cache[key] = original(vae, pixels, **kw)
        return cache[key]

    demo._encode_within = cached


_cpu = {"train": 0.0}


def _time_generator_cpu():
    """Process CPU time of the generator's training (with one thread, about what an idle core's wall
    clock would be; the shared machine's wall clock is not)."""
    from mupd.train import demo

    original = demo._train_generator

    def timed(*a, **kw):
        t0 = time.process_time()
        out = original(*a, **kw)
        _cpu["train"] = time.process_time() - t0
        return out

    demo._train_generator = timed


def summarise(name: str, config: dict, metrics: dict, seconds: float) -> dict:
    ev, gen, ae = metrics["evaluation"], metrics["generator"], metrics["autoencoder"]
    pick = lambda e: {k: round(e[k], 4) for k in ("value", "low", "high")}  # noqa: E731
    return {
        "name": name, "config": config, "images_seen": gen["images_seen"], "images_per_s": gen["images_per_s"],
        "parameters": gen["model"]["parameters"], "loss_last_10pct": round(gen["loss_last_10pct"], 4),
        "autoencoder_psnr": round(ae["held_out_reconstruction"]["psnr"], 2),
        "fid_generated": pick(ev["generated_vs_real"]["fid"]), "fid_reconstructions": pick(ev["autoencoder_reconstructions_vs_real"]["fid"]),
        "recognised": pick(ev["class_recognition"]["generated"]), "classifier_real_accuracy": pick(ev["class_recognition"]["held_out_real"]),
        "per_class": {k: round(v["value"], 3) for k, v in ev["class_recognition"]["generated_per_class"].items()},
        "n_eval": ev["generated_vs_real"]["n_fake"], "evaluation_seconds": metrics["evaluation_seconds"], "evaluation_cpu_seconds": metrics.get("evaluation_cpu_seconds"), "wall_seconds": round(seconds, 1),
    }


def judge(d: dict, vae, cache: Path | None):
    """(class-check classifier, held-out reconstructions), from ``cache`` when it holds them for these
    held-out patches (every model of a sweep is then judged by the same classifier)."""
    import numpy as np

    from mupd.train import demo
    from mupd.train.demo_check import PatchClassifier, train_classifier

    held, classes = d["held_pixels"], d["classes"]
    if cache is not None and cache.exists():
        saved = torch.load(cache, weights_only=True)
        if saved["held_sum"] == int(held.sum()) and len(saved["recon"]) == len(held):
            classifier = PatchClassifier(len(classes))
            classifier.load_state_dict(saved["classifier"])
            return classifier.eval(), saved["recon"]
    y = torch.tensor([classes.index(lab) for lab in d["labels"]])
    classifier, _ = train_classifier(d["pixels"], y, seconds=float("inf"), max_steps=600, seed=0, classes=len(classes))
    recon = torch.from_numpy(np.concatenate([demo.reconstruct(vae, held[s:s + 50]) for s in range(0, len(held), 50)]))
    recon = recon.permute(0, 3, 1, 2).contiguous()
    if cache is not None:
        torch.save({"classifier": classifier.state_dict(), "recon": recon, "held_sum": int(held.sum())}, cache)
    return classifier, recon


def generated_set(model, vae, text, classes, captions, sampler: dict, per_class: int, folder: Path):
    """(uint8 (N, H, W, 3) generations, class indices, sampling CPU s), kept in ``folder/generated.npz``
    (an interrupted sweep resumes from it; the judge can come later)."""
    import numpy as np

    from mupd.train import demo

    cached = folder / "generated.npz"
    if cached.exists():
        saved = np.load(cached)
        return saved["images"], saved["labels"], float(saved["cpu"])
    t0, fakes, labels = time.process_time(), [], []
    latent_shape = (model.config.in_channels, model.config.input_size, model.config.input_size)
    for k, cls in enumerate(classes):
        tokens, mask = text.encode([captions[str(cls)]] * 50)
        for start in range(0, per_class, 50):
            n = min(50, per_class - start)
            fakes.append(demo.generate(model, vae, {"text": (tokens[:n], mask[:n])}, n, latent_shape, sampler, seed=1000 + 97 * k + start))
            labels += [k] * n
    images, labels, cpu = np.concatenate(fakes), np.array(labels), time.process_time() - t0
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / "generated.tmp.npz", images=images, labels=labels, cpu=cpu)
    (folder / "generated.tmp.npz").replace(cached)
    return images, labels, cpu


def sampler_sweep(checkpoint: Path, names: list[str], per_class: int, out: Path, threads: int, cache: Path | None,
                  generate_only: bool = False) -> None:
    """Re-sample one trained demo model with each sampler; recognition and FID vs held-out real."""
    import numpy as np

    from mupd.bundle import load_bundle
    from mupd.train import demo
    from mupd.train.demo_check import evaluate_generations
    from mupd.train.preview import labelled_grid, save_png

    bundle = load_bundle(checkpoint)
    model, vae, text = bundle.model, bundle.vae, bundle.encoders["text"]
    cached = generate_only or (cache is not None and cache.exists())  # training patches only to train the judge
    d = demo._prepare_data(None, 0, vae.downsample * model.config.input_size, 5.0, 16 if cached else None, 2 * per_class)
    classes, captions, held = d["classes"], d["captions"], d["held_pixels"]
    run = checkpoint.resolve().parent.name
    sets = {name: generated_set(model, vae, text, classes, captions, demo.demo_sampler(SAMPLERS[name]), per_class,
                                out.with_suffix("") / f"{run}+{name}") for name in names}
    if generate_only:
        return
    classifier, recon = judge(d, vae, cache)
    real_labels = np.array([classes.index(r.label) for r in d["held_recs"]])
    document = json.loads(out.read_text()) if out.exists() else {"results": {}}
    pick = lambda e: {k: round(e[k], 4) for k in ("value", "low", "high")}  # noqa: E731
    for name, (images, labels, cpu) in sets.items():
        key = f"{run}+{name}"  # the run folder's name + the sampler's
        rows = []
        for k, cls in enumerate(classes):
            shown = np.asarray(held[np.flatnonzero(real_labels == k)[:8]].permute(0, 2, 3, 1))
            mine = images[labels == k]
            rows += [(f"real (held out): {captions[str(cls)]}", shown), (f"generated ({name}): {captions[str(cls)]}", mine[:8]),
                     ("", mine[8:16])]
        grid = save_png(labelled_grid(rows), out.with_suffix("") / key / "samples.png")  # native 96 px: no upscaling
        fake = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        ev = evaluate_generations(classifier, real=held, real_labels=real_labels, fake=fake, fake_labels=labels, recon=recon)
        document["results"][key] = {
            "name": key, "model": str(checkpoint), "sampler": demo.demo_sampler(SAMPLERS[name]), "n_per_class": per_class,
            "recognised": pick(ev["class_recognition"]["generated"]),
            "per_class": {c: round(v["value"], 3) for c, v in ev["class_recognition"]["generated_per_class"].items()},
            "fid_generated": pick(ev["generated_vs_real"]["fid"]), "fid_reconstructions": pick(ev["autoencoder_reconstructions_vs_real"]["fid"]),
            "classifier_real_accuracy": pick(ev["class_recognition"]["held_out_real"]),
            "sampling_cpu_seconds": round(cpu, 1), "grid": str(grid.relative_to(out.parent)),
            "hardware": f"shared 2-core CPU, {threads} torch thread, load average {' '.join(open('/proc/loadavg').read().split()[:3])}"}
        print(json.dumps(document["results"][key]), flush=True)
        out.write_text(json.dumps(document, indent=2) + "\n")


def latent_diagnostic(checkpoint: Path, out_png: Path, n: int = 400) -> dict:
    """Why the samples show shards: decode real TAEF2 latents perturbed in ways the generator might err
    (blur, shrink, noise, channels shuffled per position) next to generated ones; latent statistics."""
    import torch.nn.functional as F

    from mupd.bundle import load_bundle
    from mupd.data.images import to_uint8
    from mupd.flow import sample
    from mupd.train import demo
    from mupd.train.preview import labelled_grid, save_png

    bundle = load_bundle(checkpoint)
    vae, model = bundle.vae, bundle.model
    d = demo._prepare_data(None, 0, vae.downsample * model.config.input_size, 5.0, n, 16)
    real = demo._encode_within(vae, d["pixels"], deadline=float("inf"), progress=False)
    real = (real - vae.latent_mean.view(1, -1, 1, 1)) / vae.latent_std.view(1, -1, 1, 1)
    tokens, mask = bundle.encoders["text"].encode([d["captions"][str(d["classes"][-1])]] * 64)
    noise = torch.randn((64, *real.shape[1:]), generator=torch.Generator().manual_seed(5))
    gen = sample(model, noise, {"text": (tokens, mask)}, method="heun", steps=20, guidance=2.0, schedule="linear")

    def stats(x):
        xc = x - x.mean((0, 2, 3), keepdim=True)
        neighbour = ((xc[..., 1:] * xc[..., :-1]).mean((0, 2, 3)) / xc.pow(2).mean((0, 2, 3))).mean()
        f = xc.transpose(0, 1).reshape(x.shape[1], -1)
        corr = torch.corrcoef(f)
        return {"channel_std": round(float(x.std((0, 2, 3)).mean()), 3), "neighbour_corr": round(float(neighbour), 3)}, corr

    (real_stats, real_corr), (gen_stats, gen_corr) = stats(real), stats(gen)
    eye = torch.eye(real.shape[1])
    flat = real.double().transpose(0, 1).reshape(real.shape[1], -1)
    eig = torch.linalg.eigvalsh(torch.cov(flat)).flip(0)
    x = real[:8]
    rows = [("real", x), ("real blurred 3x3", F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1)), ("real x0.7", 0.7 * x),
            ("real + noise 0.3", x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))),
            ("real, channels shuffled per position", x[:, torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(2))]),
            ("generated", gen[:8])]
    save_png(labelled_grid([(name, to_uint8(vae.decode(z.float()))) for name, z in rows]), out_png)
    return {"real": real_stats, "generated": gen_stats,
            "channel_corr_mean_abs_difference": round(float((real_corr - gen_corr).abs().mean()), 4),
            "real_offdiagonal_corr_mean_abs": round(float((real_corr - eye).abs().mean()), 4),
            "pca_variance_kept_by_top_8_16_24": [round(float(eig[:k].sum() / eig.sum()), 3) for k in (8, 16, 24)]}


def denoising_diagnostic(checkpoint: Path, out_jpg: Path, n: int = 64) -> None:
    """Where the generator fails: held-out real latents noised to t and denoised by the demo model
    (small t: the model only has to keep detail; large t: it has to choose the layout), next to the
    average of 4 real latents rescaled to unit norm (what a generator that averages plausible
    latents instead of choosing one produces)."""
    from mupd.bundle import load_bundle
    from mupd.data.images import to_uint8
    from mupd.flow import sample
    from mupd.train import demo
    from mupd.train.preview import labelled_grid

    bundle = load_bundle(checkpoint)
    vae, model = bundle.vae, bundle.model
    d = demo._prepare_data(None, 0, vae.downsample * model.config.input_size, 5.0, n, 32)
    real = demo._encode_within(vae, d["held_pixels"][:32], deadline=float("inf"), progress=False)
    real = (real - vae.latent_mean.view(1, -1, 1, 1)) / vae.latent_std.view(1, -1, 1, 1)
    x = real[:8]
    tokens, mask = bundle.encoders["text"].encode([d["captions"][str(d["classes"][-1])]] * len(x))
    decode = lambda z: to_uint8(vae.decode(z.float()))  # noqa: E731
    rows = [("held-out real", decode(x))]
    generator = torch.Generator().manual_seed(0)
    for t in (0.1, 0.3, 0.5, 0.7, 1.0):
        noised = (1 - t) * x + t * torch.randn(x.shape, generator=generator)
        z = sample(model, noised, {"text": (tokens, mask)}, method="heun", steps=max(2, round(20 * t)), t_start=t)
        rows.append((f"noised to t = {t}, denoised", decode(z)))
    mean4 = real[:32].reshape(4, 8, *real.shape[1:]).mean(0)
    rows.append(("mean of 4 real latents x 2", decode(2 * mean4)))
    out_jpg.parent.mkdir(parents=True, exist_ok=True)
    labelled_grid(rows).convert("RGB").save(out_jpg, quality=88)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=16000, help="generator images seen per configuration")
    parser.add_argument("--only", default=",".join(CONFIGS), help="comma-separated configuration names")
    parser.add_argument("--train-patches", type=int, default=2000)
    parser.add_argument("--eval-samples", type=int, default=300)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--classifier-steps", type=int, default=600)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "demo_choice.json"))
    parser.add_argument("--sampler-sweep", default=None, help="a trained demo's pipeline folder: sweep SAMPLERS on it")
    parser.add_argument("--judge-cache", default=None, help="file keeping the sweep's classifier and reconstructions between runs")
    parser.add_argument("--generate-only", action="store_true", help="sweep: write the generated sets, judge later")
    parser.add_argument("--latent-diagnostic", default=None, help="a trained demo's pipeline folder: latent_diagnostic.png + stats")
    parser.add_argument("--denoising-diagnostic", default=None, help="a trained demo's pipeline folder: denoising_diagnostic.jpg")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.latent_diagnostic:
        print(json.dumps(latent_diagnostic(Path(args.latent_diagnostic), Path(args.out).with_suffix("") / "latent_diagnostic.png")))
        return 0
    if args.denoising_diagnostic:
        denoising_diagnostic(Path(args.denoising_diagnostic), Path(args.out).with_suffix("") / "denoising_diagnostic.jpg")
        return 0
    if args.sampler_sweep:
        names = args.only.split(",") if args.only != ",".join(CONFIGS) else list(SAMPLERS)
        sampler_sweep(Path(args.sampler_sweep), names, args.eval_samples // 2, Path(args.out), args.threads,
                      Path(args.judge_cache) if args.judge_cache else None, args.generate_only)
        return 0
    _share_encodings()
    _time_generator_cpu()
    from mupd.train.demo import run_demo

    out = Path(args.out)
    grids = out.with_suffix("")
    grids.mkdir(parents=True, exist_ok=True)
    document = json.loads(out.read_text()) if out.exists() else {}
    results = document.setdefault("results", {})
    for name in args.only.split(","):
        config = CONFIGS[name]
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            run = run_demo(minutes=600, out=Path(tmp) / name, device="cpu", progress=False, threads=args.threads,
                           train_patches=args.train_patches, eval_samples=args.eval_samples, sample_steps=args.steps,
                           max_images=args.images, classifier_steps=args.classifier_steps, **config)
            results[name] = summarise(name, config, run["metrics"], time.perf_counter() - t0)
            results[name]["generator_cpu_ms_per_image"] = round(1000 * _cpu["train"] / max(run["metrics"]["generator"]["images_seen"], 1), 2)
            (grids / name).mkdir(exist_ok=True)
            shutil.copy(Path(tmp) / name / "samples.png", grids / name / "samples.png")
        print(json.dumps(results[name]), flush=True)
        results[name]["hardware"] = (f"shared 2-core CPU, {args.threads} torch thread(s), load average "
                                     f"{' '.join(open('/proc/loadavg').read().split()[:3])}, {platform.machine()}, torch {torch.__version__}")
        results[name]["protocol"] = {"images_seen": args.images, "train_patches": args.train_patches,
                                     "eval_samples": args.eval_samples, "sampler": f"heun {args.steps} steps, guidance 2"}
        out.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
