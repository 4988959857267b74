"""``mupd evaluate``: metrics.json + report.html for generated vs real images."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    DEFAULT_RESAMPLES, DEFAULT_MIN_SAMPLES = 100, 50  # as in bootstrap.py / distribution.py (not imported: torch)

    p = subparsers.add_parser(
        "evaluate", help="FID/KID, precision/recall, nuclei statistics, few-shot utility -> metrics.json + report.html",
        description="Compare generated images with real ones. Writes OUT/metrics.json and OUT/report.html "
                    "(with PNG plots and image grids next to it); features are cached in OUT/features/ so re-runs resume.")
    p.add_argument("--real", required=True, help="folder of real images (recursive png/jpg/tif), a CSV manifest with a 'path' column, or a .npz feature file")
    p.add_argument("--fake", required=True, help="folder of generated images (or manifest / .npz feature file)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--metrics", default="fid,kid,prdc,cells", help="comma list from fid,kid,prdc,cells,fewshot,retrieval,similarity")
    p.add_argument("--features", default="auto", help="inception | random-inception | an image-encoder name "
                   "(auto: inception when its weights are on disk, else random-inception)")
    p.add_argument("--max-images", type=int, default=None, help="use at most N images per set (fixed-seed random subset)")
    p.add_argument("--image-size", type=int, default=None, help="resize every image to PX x PX (bicubic) before anything else")
    p.add_argument("--min-samples", type=int, default=DEFAULT_MIN_SAMPLES, help=f"refuse FID/KID below this many images per set (default {DEFAULT_MIN_SAMPLES})")
    p.add_argument("--bootstrap", type=int, default=DEFAULT_RESAMPLES, help=f"bootstrap resamples for the CIs (default {DEFAULT_RESAMPLES})")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--nucleus-diameter", type=float, default=10.0, help="typical nucleus diameter in pixels (default 10, PCam at ~1 um/px)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-report", action="store_true", help="write metrics.json only")
    p.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    import json

    from .evaluate import evaluate

    result = evaluate(args.real, args.fake, args.out, metrics=args.metrics, features=args.features,
                      max_images=args.max_images, image_size=args.image_size, min_samples=args.min_samples,
                      n_resamples=args.bootstrap, batch_size=args.batch_size, nucleus_diameter=args.nucleus_diameter,
                      seed=args.seed, report=not args.no_report)
    summary = {k: (v["value"] if isinstance(v, dict) and "value" in v else v) for k, v in result.items() if k in ("fid", "kid")}
    if "prdc" in result:
        summary.update({k: result["prdc"][k]["value"] for k in ("precision", "recall")})
    print(json.dumps(summary, indent=1))
    print(f"wrote {args.out}/metrics.json" + ("" if args.no_report else f" and {args.out}/report.html"))
    return 0
