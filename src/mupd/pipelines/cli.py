"""``mupd generate | vary | stain | translate | augment``.

Every written PNG carries its generation parameters (``mupd:*`` tEXt chunks) and every output
folder gets a ``manifest.csv``. Heavy imports happen inside the run functions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_guidance(text: str | None):
    """``"3"`` -> 3.0 (joint); ``"text=3,rna=2"`` -> {"text": 3.0, "rna": 2.0}."""
    from ..errors import MupdError

    if text is None:
        return None
    text = str(text).strip()
    try:
        if "=" not in text:
            return float(text)
        out = {}
        for part in text.split(","):
            name, value = part.split("=", 1)
            out[name.strip()] = float(value)
        return out
    except ValueError:
        raise MupdError(f"--guidance {text!r} not understood; use a number (3) or per modality (text=3,rna=2)") from None


def _interval(text: str):
    from ..errors import MupdError

    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise MupdError(f"--guidance-interval {text!r} not understood; use LOW,HIGH such as 0,0.7") from None
    return lo, hi


def _common(p: argparse.ArgumentParser, *, steps: int = 50) -> None:
    p.add_argument("--model", required=True, help="pipeline folder (model_index.json, model/, vae/, ...)")
    p.add_argument("--out", required=True, help="output folder (PNG files + manifest.csv)")
    p.add_argument("--steps", type=int, default=steps, help=f"sampling steps (default {steps})")
    p.add_argument("--sampler", default="heun", choices=("heun", "euler", "euler_maruyama"))
    p.add_argument("--seed", type=int, default=0, help="seed of the first image; image i uses seed + i")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: settings / MUPD_DEVICE)")


def register(subparsers) -> None:
    g = subparsers.add_parser("generate", help="generate H&E from text / RNA / a reference image (any subset)")
    _common(g)
    g.add_argument("--text", help="clinical / morphological text")
    g.add_argument("--label", help="a class label of the model (its caption from model_index.json)")
    g.add_argument("--rna", help="FILE.h5ad:OBS, TABLE.csv:SLIDE_ID or a gene<TAB>value FILE.tsv")
    g.add_argument("--ref", help="reference image (reference-image stream)")
    g.add_argument("--n", type=int, default=4, help="images per condition row (default 4)")
    g.add_argument("--guidance", help="CFG scale: 3, or per modality text=3,rna=2")
    g.add_argument("--guidance-interval", default="0,1", help="apply guidance for t in LOW,HIGH (default 0,1)")
    g.add_argument("--batch", help="CSV/JSONL of conditions (columns text, rna, ref, label, n, seed, guidance)")
    g.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    g.set_defaults(func=run_generate)

    v = subparsers.add_parser("vary", help="new tissue like a reference image (reference stream and/or SDEdit strength)")
    _common(v)
    v.add_argument("--image", required=True, help="the reference image")
    v.add_argument("--strength", type=float, default=1.0, help="SDEdit noise level in [0,1]; 1 = from pure noise")
    v.add_argument("--no-reference", action="store_true", help="do not feed the image to the reference stream")
    v.add_argument("--text", help="optional text condition")
    v.add_argument("--n", type=int, default=4)
    v.add_argument("--guidance", help="CFG scale: 3, or per modality image=2,text=3")
    v.set_defaults(func=run_vary)

    for name, helptext, default_method in (
        ("stain", "H&E -> IHC / multiplex IF (and IHC -> IF) with a stain fine-tune", "readout"),
        ("translate", "source domain -> target domain (FF -> FFPE); paired fine-tune or unpaired SDEdit", None),
    ):
        s = subparsers.add_parser(name, help=helptext)
        _common(s, steps=20)
        s.add_argument("--image", required=True, nargs="+", help="source image(s) or folder(s) of images, any size")
        s.add_argument("--method", default=default_method,
                       choices=("readout", "sample") if name == "stain" else ("readout", "sample", "sdedit"),
                       help="readout = one pass (posterior mean); sample = integrate the flow"
                            + ("; sdedit = unpaired recipe" if name == "translate" else ""))
        s.add_argument("--tile", type=int, default=None, help="tile size (default: the model's image size)")
        s.add_argument("--overlap", type=int, default=None, help="tile overlap in px (default tile/4)")
        s.add_argument("--batch-size", type=int, default=16, help="tiles per forward pass")
        if name == "translate":
            s.add_argument("--strength", type=float, default=0.5, help="SDEdit noise level (unpaired recipe)")
        s.set_defaults(func=run_stain if name == "stain" else run_translate)

    a = subparsers.add_parser("augment", help="write a synthetic labelled dataset (class-per-folder) for few-shot training")
    _common(a, steps=20)
    a.add_argument("--data", required=True, help="class-per-folder dataset (FOLDER/<class>/*.png)")
    a.add_argument("--per-class", type=int, required=True, help="synthetic images per class")
    a.add_argument("--guidance", help="CFG scale")
    a.add_argument("--strength", type=float, default=None, help="SDEdit from the real images (optional)")
    a.add_argument("--no-reference", action="store_true", help="do not use real images as references")
    a.add_argument("--limit-real", type=int, default=None, help="use only the first N real images per class")
    a.add_argument("--batch-size", type=int, default=8)
    a.set_defaults(func=run_augment)


def _load(args):
    from .base import Pipeline

    return Pipeline.from_pretrained(args.model, device=args.device)


def _report(out) -> None:
    for note in getattr(out, "notes", []) or []:
        print(note, file=sys.stderr)


def run_generate(args) -> int:
    from ..errors import MupdError
    from .inputs import read_condition_rows

    pipe = _load(args)
    out_dir = Path(args.out)
    interval = _interval(args.guidance_interval)
    if args.batch:
        if any(getattr(args, k) for k in ("text", "rna", "ref", "label")):
            raise MupdError("--batch takes its conditions from the file; drop --text/--rna/--ref/--label")
        rows = read_condition_rows(args.batch)
    else:
        rows = [{k: getattr(args, k) for k in ("text", "rna", "ref", "label") if getattr(args, k) is not None}]
    seed = args.seed
    written = 0
    for r, row in enumerate(rows):
        n = int(row.get("n", args.n))
        row_seed = int(row.get("seed", seed))
        prefix = f"row{r:04d}" if args.batch else "image"
        names = [out_dir / f"{prefix}-{k:05d}.png" for k in range(n)]
        if args.batch and all(p.exists() for p in names):  # resume: row already written
            seed = row_seed + n
            continue
        result = pipe(text=row.get("text"), rna=row.get("rna"), image=row.get("ref"), label=row.get("label"), n=n,
                      steps=args.steps, sampler=args.sampler,
                      guidance=parse_guidance(row.get("guidance", args.guidance)), guidance_interval=interval,
                      seed=row_seed, batch_size=args.batch_size, progress=True)
        _report(result)
        result.save(out_dir, prefix=prefix)
        written += n
        seed = row_seed + n
    print(f"wrote {written} images to {out_dir} (parameters in each PNG and in {out_dir / 'manifest.csv'})")
    return 0


def run_vary(args) -> int:
    pipe = _load(args)
    result = pipe.vary(args.image, strength=args.strength, n=args.n, use_reference=not args.no_reference,
                       text=args.text, steps=args.steps, sampler=args.sampler, guidance=parse_guidance(args.guidance),
                       seed=args.seed, progress=True)
    _report(result)
    result.save(args.out, prefix="vary")
    print(f"wrote {len(result)} variations to {args.out}")
    return 0


def _sources(items: list[str]) -> list[Path]:
    from ..errors import MupdError
    from ..data.folders import IMAGE_SUFFIXES

    out = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            out += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.exists():
            out.append(path)
        else:
            raise MupdError(f"source image {path} does not exist")
    if not out:
        raise MupdError(f"no images found in {items}")
    return out


def _run_dense(args, task: str) -> int:
    from .output import append_manifest, manifest_row

    pipe = _load(args)
    out_dir = Path(args.out)
    rows = []
    for k, source in enumerate(_sources(args.image)):
        target = out_dir / f"{source.stem}.png"
        if target.exists():  # resume
            continue
        kwargs = dict(steps=args.steps, sampler=args.sampler, seed=args.seed, tile=args.tile, overlap=args.overlap,
                      batch_size=args.batch_size, progress=True)
        if task == "stain":
            result = pipe.stain(source, method=args.method, **kwargs)
        else:
            result = pipe.translate(source, method=args.method, strength=args.strength, **kwargs)
        from .pngmeta import save_png

        save_png(result.pil(0), target, result.parameters[0])
        rows.append(manifest_row(target.name, result.parameters[0], source=str(source)))
    if rows:
        append_manifest(out_dir / "manifest.csv", rows)
    print(f"wrote {len(rows)} {task} results to {out_dir}")
    return 0


def run_stain(args) -> int:
    return _run_dense(args, "stain")


def run_translate(args) -> int:
    return _run_dense(args, "translate")


def run_augment(args) -> int:
    from .augment import augment

    pipe = _load(args)
    manifest = augment(pipe, args.data, args.out, per_class=args.per_class, steps=args.steps, sampler=args.sampler,
                       guidance=parse_guidance(args.guidance), seed=args.seed, strength=args.strength,
                       use_reference=not args.no_reference, batch_size=args.batch_size, limit_real=args.limit_real)
    print(f"wrote the synthetic dataset to {args.out} (manifest {manifest})")
    return 0
