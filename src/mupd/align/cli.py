"""``mupd align train CONFIG_OR_PRESET [--out DIR] [--resume] [--dry-run]`` and ``mupd align evaluate DIR``."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    parser = subparsers.add_parser("align", help="contrastive image/text/RNA alignment (offline encoders, retrieval)")
    sub = parser.add_subparsers(dest="align_command", metavar="ACTION")
    train = sub.add_parser("train", help="train a shared embedding space (presets: pcam-image-text, her2st-image-rna, tcga-rna-text; "
                          "slide level: tangle-slide, mstar-slide, mstar-distill)")
    train.add_argument("config", nargs="?", help="a preset name or a YAML file (optionally 'preset: NAME' plus fields)")
    train.add_argument("--preset", help="a preset name (same as giving it as CONFIG)")
    train.add_argument("--out", help="checkpoint folder (default runs/align/<preset>)")
    train.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    train.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    train.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="override config fields (YAML values)")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.set_defaults(func=run_train)
    evaluate = sub.add_parser("evaluate", help="retrieval / zero-shot / linear probe on the held-out split")
    evaluate.add_argument("path", help="a folder written by 'mupd align train'")
    evaluate.set_defaults(func=run_evaluate)
    parser.set_defaults(func=lambda args: (parser.print_help(), 1)[1])


def _overrides(items: list[str]) -> dict:
    import yaml

    from ..errors import MupdError

    out = {}
    for item in items:
        if "=" not in item:
            raise MupdError(f"--set expects FIELD=VALUE, got '{item}'")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def run_train(args) -> int:
    from pathlib import Path

    from .config import SLIDE_DATASETS, load_config

    from ..errors import require

    require((args.config is None) != (args.preset is None), "give a preset or a config file: either CONFIG or --preset NAME")
    config = load_config(args.config or args.preset, **_overrides(args.set))
    out = Path(args.out or Path("runs") / "align" / config.name)
    require(not out.is_file(), f"--out {out} is a file; give a folder for the checkpoint")
    require(not args.resume or out.is_dir(), f"--resume: {out} does not exist; run without --resume to start")
    slide = config.dataset in SLIDE_DATASETS
    if args.dry_run:
        print(json.dumps({"out": str(out), **config.to_dict()}, indent=2))
        return 0
    if slide and config.stage == "distill":
        require(config.stage1 is not None and (Path(config.stage1) / "config.json").is_file(),
                f"stage distill needs stage1 = a stage-1 slide run folder (got {config.stage1!r}); "
                "e.g. mupd align train mstar-distill --set stage1=runs/align/mstar-slide")
    if slide:
        require(not args.resume, "--resume is not supported by the slide-level presets (runs take minutes); rerun without it")
        return run_slide(config, out, progress=not args.no_progress)
    from ..checkpoint import write_json
    from .data import load_pairs
    from .evaluate import evaluate_pairs
    from .train import train_align

    train = load_pairs(config, "train")
    model = train_align(config, out, resume=args.resume, progress=not args.no_progress, data=train)
    metrics = evaluate_pairs(model, train, load_pairs(config, "test", vocabulary=train.vocabulary))
    write_json(out / "metrics.json", metrics)
    print(json.dumps(metrics, indent=2))
    print(f"wrote {out} (use it with registry.build(<modality>, 'mupd-aligned', path='{out}'))")
    return 0


def run_slide(config, out, *, progress: bool = True) -> int:
    """Stage 1 (align) or stage 2 (distill) on her2st pseudo-slides; metrics on the held-out sections."""
    from ..checkpoint import write_json
    from .slide_data import load_slides, tile_encoder
    from .slide_eval import evaluate_distilled, evaluate_slides
    from .slide_train import distill_slide, load_slide_model, load_tile_encoder, train_slide

    if config.stage == "distill":
        stage1, config1, saved = load_slide_model(config.stage1)
        before = load_tile_encoder(config.stage1, config1)
        from .config import replace

        # The bags are the stage-1 run's (same sections, crops and vocabulary); the schedule is stage 2's.
        data_config = replace(config1, seed=config.seed, bags_per_section=config.bags_per_section)
        from .model import load_vocabulary

        vocabulary = load_vocabulary(config.stage1)
        train = load_slides(data_config, "train", vocabulary=vocabulary, report_rule=saved["report_rule"], encoder=before)
        test = load_slides(data_config, "test", vocabulary=vocabulary, report_rule=saved["report_rule"], encoder=before)
        distiller = distill_slide(config, out, train, progress=progress)
        metrics = evaluate_distilled(before, distiller.student, train, test)
    else:
        encoder = tile_encoder(config)
        train = load_slides(config, "train", encoder=encoder)
        test = load_slides(config, "test", vocabulary=train.vocabulary, report_rule=train.report_rule, encoder=encoder)
        model = train_slide(config, out, train, encoder=encoder, progress=progress)
        metrics = evaluate_slides(model, train, test)
    write_json(out / "metrics.json", metrics)
    print(json.dumps(metrics, indent=2))
    print(f"wrote {out}")
    return 0


def run_evaluate(args) -> int:
    from pathlib import Path

    from ..errors import require

    require((Path(args.path) / "config.json").is_file(),
            f"{args.path} is not a folder written by 'mupd align train' (no config.json there)")
    from ..checkpoint import read_json
    from .config import AlignConfig, replace
    from .data import load_pairs
    from .evaluate import evaluate_pairs
    from .model import AlignModel, load_vocabulary

    if read_json(Path(args.path) / "config.json").get("format") == "mupd-align-slide":
        return _evaluate_slide(args.path)
    model = AlignModel.from_pretrained(args.path).eval()
    saved = read_json(f"{args.path}/config.json").get("align_config", {})
    config = replace(AlignConfig(), **saved)
    vocabulary = load_vocabulary(args.path)
    train = load_pairs(config, "train", vocabulary=vocabulary)
    metrics = evaluate_pairs(model, train, load_pairs(config, "test", vocabulary=vocabulary or train.vocabulary))
    print(json.dumps(metrics, indent=2))
    return 0


def _evaluate_slide(path) -> int:
    """A stage-1 slide folder: rebuild its bags with the saved vocabulary, report rule and tile encoder."""
    from .model import load_vocabulary
    from .slide_data import load_slides, tile_encoder
    from .slide_eval import evaluate_slides
    from .slide_train import load_slide_model, load_tile_encoder

    model, config, saved = load_slide_model(path)
    encoder = load_tile_encoder(path, config) if config.tile_encoder == "cnn" else tile_encoder(config)
    kwargs = {"vocabulary": load_vocabulary(path), "report_rule": saved["report_rule"], "encoder": encoder}
    train, test = load_slides(config, "train", **kwargs), load_slides(config, "test", **kwargs)
    print(json.dumps(evaluate_slides(model, train, test), indent=2))
    return 0
