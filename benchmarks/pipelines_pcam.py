"""PCam on a 2-core CPU: (1) label-conditioned generations scored by a classifier trained on real
patches (accuracy vs chance 0.5), (2) 5/10-shot linear probes with and without synthetic images
written by ``mupd.pipelines.augment``. Writes ``benchmarks/results/pipelines_pcam.json``.

The generator is ``mupd demo``'s output (a tiny text-conditioned MuPD trained for a few minutes on
PCam train patches with the class captions); pass an existing one with ``--model DIR`` or let the
script run the demo (``--minutes``). Honest caveats, also in the JSON: the generator saw thousands
of labelled PCam training patches, so the synthetic images carry label knowledge the 5/10 real
shots do not; the few-shot features are the demo autoencoder's latents (unsupervised, frozen),
not a pathology foundation model (none is available offline).

    python benchmarks/pipelines_pcam.py [--model DIR | --minutes 4] [--per-class 64]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def load_uint8(paths, size: int) -> torch.Tensor:
    from PIL import Image

    arrays = [np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.Resampling.BICUBIC)) for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def train_classifier(x: torch.Tensor, y: torch.Tensor, seconds: float, seed: int = 0):
    """The demo's own judge (``mupd.train.demo_check``), trained longer here on more patches."""
    from mupd.train.demo_check import train_classifier as train

    return train(x, y, seconds=seconds, seed=seed)[0]


def predict(model, x: torch.Tensor) -> np.ndarray:
    return model.predict(x)


@torch.no_grad()
def latent_features(vae, x: torch.Tensor) -> np.ndarray:
    """Frozen unsupervised features: the autoencoder's latents, 4x4 average-pooled, plus channel std."""
    out = []
    for c in x.split(128):
        z = vae.encode(c.float() / 127.5 - 1)
        out.append(torch.cat([F.adaptive_avg_pool2d(z, 4).flatten(1), z.flatten(2).std(-1)], 1))
    return torch.cat(out).numpy()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None, help="an existing pipeline folder (e.g. mupd-demo/checkpoint)")
    parser.add_argument("--minutes", type=float, default=4.0, help="mupd demo budget when --model is not given")
    parser.add_argument("--per-class", type=int, default=64, help="synthetic images per class")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--classifier-seconds", type=float, default=60.0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "pipelines_pcam.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # on a shared 2-core machine one thread is several times faster (no spin-waiting)

    from mupd.data import patch_folder, read_manifest
    from mupd.metrics.bootstrap import mean_ci
    from mupd.metrics.fewshot import few_shot
    from mupd.pipelines import Pipeline
    from mupd.pipelines.augment import augment
    from mupd.settings import sample_data_dir

    data = sample_data_dir()
    if data is None:
        print("sample data not found (set MUPD_SAMPLE_DATA)", file=sys.stderr)
        return 1
    timings = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else None
        if model_dir is None:
            from mupd.train.demo import run_demo

            t0 = time.perf_counter()
            run_demo(minutes=args.minutes, out=Path(tmp) / "demo", progress=False)
            timings["demo_seconds"] = round(time.perf_counter() - t0, 1)
            print(f"demo done in {timings['demo_seconds']} s", flush=True)
            model_dir = Path(tmp) / "demo" / "checkpoint"
        pipe = Pipeline.from_pretrained(model_dir, device="cpu")
        size = pipe.image_size

        train = patch_folder(data / "pcam/train", limit_per_class=1500)
        valid = patch_folder(data / "pcam/valid", limit_per_class=300)
        x_train, y_train = load_uint8([r.image for r in train], size), torch.tensor([int(r.label) for r in train])
        x_valid, y_valid = load_uint8([r.image for r in valid], size), np.array([int(r.label) for r in valid])

        t0 = time.perf_counter()
        classifier = train_classifier(x_train, y_train, args.classifier_seconds)
        timings["classifier_seconds"] = round(time.perf_counter() - t0, 1)
        print("classifier trained", flush=True)
        real_acc = mean_ci((predict(classifier, x_valid) == y_valid).astype(float))

        # synthetic dataset through the augment pipeline (PNG + manifest), then scored
        t0 = time.perf_counter()
        manifest = augment(pipe, data / "pcam/valid", Path(tmp) / "synthetic", per_class=args.per_class, steps=args.steps,
                           guidance=2.0, seed=0, limit_real=1, batch_size=16, progress=False)
        timings["generation_seconds"] = round(time.perf_counter() - t0, 1)
        print(f"augment wrote {2 * args.per_class} images in {timings['generation_seconds']} s", flush=True)
        synthetic = read_manifest(manifest)
        x_syn = load_uint8([r.image for r in synthetic], size)
        y_syn = np.array([int(r.label) for r in synthetic])
        label_acc = {str(c): mean_ci((predict(classifier, x_syn[y_syn == c]) == c).astype(float)).to_dict() for c in (0, 1)}
        overall = mean_ci((predict(classifier, x_syn) == y_syn).astype(float))

        # unguided samples (guidance 1 = plain conditional) for comparison
        plain = {c: pipe(label=str(c), n=args.per_class // 2, steps=args.steps, seed=10_000, output_type="np").images for c in (0, 1)}
        plain_x = torch.from_numpy(np.concatenate([(plain[c] * 255).round().astype(np.uint8) for c in (0, 1)])).permute(0, 3, 1, 2)
        plain_y = np.repeat([0, 1], args.per_class // 2)
        plain_acc = mean_ci((predict(classifier, plain_x) == plain_y).astype(float))

        feats = lambda x: latent_features(pipe.vae, x)  # noqa: E731
        shots = few_shot(feats(x_train), y_train.numpy(), feats(x_valid), y_valid, shots=(5, 10), seeds=range(20),
                         synthetic_features=feats(x_syn), synthetic_labels=y_syn, n_resamples=500)

    report = {
        "hardware": f"2-core CPU shared with other jobs, 1 torch thread ({platform.machine()}), torch {torch.__version__}",
        "generator": str(args.model) if args.model else f"mupd demo, {args.minutes} min (tiny MuPD, depth 4, width 128, text = class caption)",
        "labels": pipe.labels,
        "classifier": {"what": "small CNN trained on 3000 real PCam train patches", "real_valid_accuracy": real_acc.to_dict(),
                       "n_valid": int(len(y_valid))},
        "label_conditioned_generation": {
            "n_per_class": args.per_class, "steps": args.steps, "sampler": "heun",
            "guidance_2.0": {"accuracy": overall.to_dict(), "per_label": label_acc},
            "guidance_none": {"accuracy": plain_acc.to_dict(), "n": int(len(plain_y))},
            "chance": 0.5,
        },
        "few_shot": shots,
        "few_shot_features": "frozen latents of the demo autoencoder (4x4 pooled + channel std), logistic-regression probe",
        "caveats": ["the generator was trained on labelled PCam train patches (thousands), so synthetic images carry "
                    "label knowledge beyond the k real shots",
                    "tiny models, minutes of CPU: a mechanics check, not a measure of MuPD's quality"],
        "timings": timings,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps({"real_acc": real_acc.to_dict(), "gen_acc_g2": overall.to_dict(), "gen_acc_plain": plain_acc.to_dict(),
                      "few_shot": {k: {a: v[a]["accuracy"] if "accuracy" in v[a] else v[a] for a in v} for k, v in shots["results"].items()}},
                     indent=1, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
