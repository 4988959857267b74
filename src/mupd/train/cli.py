"""``mupd train CONFIG`` and ``mupd demo``.

    mupd train configs/pcam-tiny.yaml                       # resumes automatically from OUT/checkpoint
    mupd train configs/pcam-tiny.yaml --set optim.lr=3e-4 --model.preset S/2 --dry-run
    mupd train --preset tiny --set data.path=/data/pcam/train --set vae.path=/models/vae
    torchrun --nproc-per-node 8 -m mupd train configs/pcam-S2.yaml   (see mupd.train.distributed)
    mupd demo [--minutes 5] [--out ./mupd-demo] [--data FOLDER] [--image-size 64] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import sys


def register(subparsers) -> None:
    train = subparsers.add_parser(
        "train",
        help="train or fine-tune a MuPD model from a YAML config (torchrun for many GPUs)",
        description="Train from a YAML config. Override keys with --set section.key=value or --section.key value. "
        "A run folder that already holds a checkpoint resumes from it.",
    )
    train.add_argument("config", nargs="?", help="YAML config (schema: mupd.train.config)")
    _train_options(train)
    _accept_dotted_flags(train)
    train.set_defaults(func=run_train)

    demo = subparsers.add_parser(
        "demo",
        help="the first run: train a small text-conditioned model on real PCam patches for a few minutes on the CPU",
        description="Trains a small MuPD on PCam patches (from the sample data, or --data FOLDER of class-per-folder "
        "patches) in the latent space of the pretrained TAEF2 autoencoder (or one it trains), then writes samples.png, "
        "metrics.json, report.html and checkpoint/.",
    )
    demo.add_argument("--minutes", type=float, default=5.0, help="training time budget (encoding + generator), default 5; the evaluation (~3 min) comes after")
    demo.add_argument("--out", default="./mupd-demo", help="output folder (default ./mupd-demo)")
    demo.add_argument("--device", default=None, help="cpu, cuda or auto (default: settings / MUPD_DEVICE)")
    demo.add_argument("--data", default=None, help="a folder with one sub-folder of image patches per class (default: PCam from the sample data)")
    demo.add_argument("--image-size", type=int, default=96, help="patch size in pixels, a multiple of 16 (default 96, PCam's size)")
    demo.add_argument("--autoencoder", choices=("auto", "taef2", "trained"), default="auto",
                      help="latent space: the pretrained TAEF2 (MIT), a tiny one trained by the demo, or auto (TAEF2 when found)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--dataset", choices=("pcam", "her2st"), default="pcam",
                      help="pcam: text-conditioned (default); her2st: RNA-conditioned spot crops, held-out section C5 (--data: a her2st folder)")
    demo.add_argument("--eval-samples", type=int, default=None, help="generated patches (and held-out real ones) for the evaluation, default 500")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(func=run_demo)


def _train_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. optim.lr=3e-4 (repeatable)")
    parser.add_argument("--preset", default=None, help="start from a named training preset (tiny, demo, S/2-256, XL/2-256, XL/2-512)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config as YAML and exit")
    parser.add_argument("--resume", nargs="?", const="auto-required", default="auto", metavar="CHECKPOINT",
                        help="resume from CHECKPOINT (default: OUTPUT/checkpoint when it exists)")
    parser.add_argument("--no-resume", action="store_true", help="start fresh even if OUTPUT/checkpoint exists")
    parser.add_argument("--device", default=None, help="cpu, cuda or auto")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop (and checkpoint) after this much wall time")


def dotted_to_set(tokens: list[str]) -> list[str]:
    """Rewrite ``--section.key VALUE`` / ``--section.key=VALUE`` as ``--set section.key=VALUE``."""
    out, i = [], 0
    while i < len(tokens):
        token = tokens[i]
        if token.startswith("--") and "." in token.split("=", 1)[0] and not token.startswith("--set"):
            if "=" in token:
                out += ["--set", token[2:]]
                i += 1
                continue
            if i + 1 < len(tokens):
                out += ["--set", f"{token[2:]}={tokens[i + 1]}"]
                i += 2
                continue
        out.append(token)
        i += 1
    return out


def _accept_dotted_flags(parser: argparse.ArgumentParser) -> None:
    """Let this sub-parser take dotted flags, whatever the top-level parser does with the rest."""
    original = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        return original(dotted_to_set(list(sys.argv[1:] if args is None else args)), namespace)

    parser.parse_known_args = parse_known_args


def resolve_config(args: argparse.Namespace):
    from ..errors import MupdError
    from .config import TrainConfig

    overrides = list(args.overrides)
    if args.config:
        base = TrainConfig.from_yaml(args.config, overrides=([f"preset={args.preset}"] if args.preset else []) + overrides)
    elif args.preset:
        base = TrainConfig.from_dict({"preset": args.preset}).with_overrides(overrides)
    else:
        raise MupdError("mupd train needs a CONFIG file or --preset NAME (try: mupd train --preset tiny --dry-run)")
    return base.validate()


def check_config_paths(cfg) -> None:
    """Every path the config names exists (or is an explicit ``hub:`` id / the built-in ``taef2``),
    checked before torch or any model loads, so a typo fails in a second, naming the key and path."""
    from pathlib import Path

    from ..errors import MupdError

    named = [("data.path", cfg.data.path), ("vae.path", cfg.vae.path), ("vae.source_path", cfg.vae.source_path),
             ("align.path", cfg.align.path), ("finetune.init_from", cfg.finetune.init_from)]
    named += [(f"conditions.{m}.path", spec.path) for m, spec in cfg.conditions.items()]
    for key, value in named:
        text = "" if value is None else str(value)
        if not text or text.startswith(("hub:", "hf-hub:")) or (key.startswith("vae.") and text == "taef2"):
            continue
        if key == "data.path" and "://" in text and not text.startswith("file://"):
            _check_url(key, text)  # object storage: its backend must be installed; reachability shows at read time
            continue
        if not Path(text).exists():
            hint = " (create it with `mupd vae train --data FOLDER --out DIR`, or use taef2)" if key.startswith("vae.") else ""
            raise MupdError(f"{key}: {text} does not exist{hint}; fix the config or pass --set {key}=PATH")


def _check_url(key: str, url: str) -> None:
    from ..errors import MupdError

    protocol = url.split("://", 1)[0]
    try:
        import fsspec

        fsspec.get_filesystem_class(protocol)
    except (ImportError, ValueError) as exc:
        raise MupdError(f"{key}: {url}: no file system for '{protocol}://' ({exc}); install its fsspec backend "
                        f"(s3fs for s3://, gcsfs for gs://) or copy the shards to a local folder") from None


def run_train(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    if args.dry_run:
        sys.stdout.write(cfg.to_yaml())
        return 0
    check_config_paths(cfg)
    from .loop import train

    resume = False if args.no_resume else (True if args.resume == "auto-required" else args.resume)
    max_seconds = None if args.max_minutes is None else 60.0 * args.max_minutes
    result = train(cfg, device=args.device, resume=resume, max_seconds=max_seconds)
    if os.environ.get("RANK", "0") != "0":  # under torchrun one summary, from rank 0
        return 0
    print(f"mupd train: {result['images_seen']} images in {result['seconds']:.0f} s "
          f"({result['images_per_s']:.1f} img/s); checkpoint: {result['checkpoint']}", flush=True)
    return 0


def run_demo(args: argparse.Namespace) -> int:
    if getattr(args, "dataset", "pcam") == "her2st":
        from .demo_her2st import run_demo_her2st

        out = "./mupd-demo-her2st" if args.out == "./mupd-demo" else args.out
        summary = run_demo_her2st(minutes=args.minutes, out=out, seed=args.seed, progress=not args.no_progress,
                                  threads=args.threads, root=args.data)
        print(f"mupd demo: wrote {summary['out']}/grid.png, metrics.json, report.html and checkpoint/", flush=True)
        return 0
    from .demo import run_demo as demo

    summary = demo(minutes=args.minutes, out=args.out, device=args.device, data=args.data, image_size=args.image_size,
                   seed=args.seed, progress=not args.no_progress, eval_samples=args.eval_samples,
                   threads=args.threads, autoencoder=args.autoencoder)
    print(f"mupd demo: wrote {summary['out']}/samples.png, metrics.json, report.html and checkpoint/", flush=True)
    print(f"mupd demo: latent space = {summary['metrics']['autoencoder']['which']}", flush=True)
    print(f"mupd demo: {summary['metrics']['evaluation']['summary']}", flush=True)
    return 0
