"""``mupd generate | vary | stain | translate | augment``.

Every written PNG carries its generation parameters (``mupd:*`` tEXt chunks) and every output
folder gets a ``manifest.csv``. Heavy imports happen inside the run functions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_guidance(text):
    """``"3"`` -> 3.0 (joint); ``"text=3,rna=2"`` or ``["text=3", "rna=2"]`` -> {"text": 3.0, "rna": 2.0}."""
    from ..errors import MupdError

    if text is None:
        return None
    if isinstance(text, dict):  # a JSONL batch row may hold {"text": 3, "rna": 2}
        return _per_modality([f"{k}={v}" for k, v in text.items()], "guidance", "text=3,rna=2")
    parts = [str(text)] if isinstance(text, (str, int, float)) else [str(t) for t in text]
    if len(parts) == 1 and "=" not in parts[0]:
        try:
            return float(parts[0].strip())
        except ValueError:
            raise MupdError(f"--guidance {parts[0]!r} not understood; use a number (3) or per modality "
                            "(text=3,rna=2)") from None
    return _per_modality(parts, "--guidance", "text=3,rna=2")


def parse_scales(values):
    """``["rna=1.5"]`` or ``"rna=1.5,text=0.8"`` -> {"rna": 1.5, "text": 0.8} (lambda_m per modality)."""
    if values is None:
        return None
    parts = [values] if isinstance(values, str) else list(values)
    return _per_modality(parts, "--scale", "rna=1.5")


def _per_modality(parts: list[str], flag: str, example: str) -> dict:
    from ..errors import MupdError

    out = {}
    for item in ",".join(parts).split(","):
        name, sep, value = item.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise MupdError(f"{flag} {item!r} not understood; give MODALITY=SCALE per modality, e.g. {example}") from None
    return out


def _interval(text: str):
    from ..errors import MupdError

    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise MupdError(f"--guidance-interval {text!r} not understood; use LOW,HIGH such as 0,0.7") from None
    if not 0.0 <= lo <= hi <= 1.0:
        raise MupdError(f"--guidance-interval {text!r}: need 0 <= LOW <= HIGH <= 1")
    return lo, hi


def _common(p: argparse.ArgumentParser, *, steps: int = 50) -> None:
    p.add_argument("--model", required=True, help="pipeline folder (model_index.json, model/, vae/, ...)")
    p.add_argument("--out", required=True, help="output folder (PNG files + manifest.csv)")
    p.add_argument("--steps", type=int, default=steps, help=f"sampling steps (default {steps})")
    p.add_argument("--sampler", default="heun", choices=("heun", "euler", "euler_maruyama"))
    p.add_argument("--seed", type=int, default=0, help="seed of the first image; image i uses seed + i")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: settings / MUPD_DEVICE)")


def _guidance_flags(p: argparse.ArgumentParser, example: str) -> None:
    p.add_argument("--guidance", action="append",
                   help=f"classifier-free guidance: a joint scale (3) or per modality ({example}; repeatable)")
    p.add_argument("--scale", action="append", metavar="MODALITY=LAMBDA",
                   help="per-modality inference scale lambda_m of the cross-attention, e.g. rna=1.5 "
                        "(1 = as trained, 0 = stream off; repeatable)")


def register(subparsers) -> None:
    g = subparsers.add_parser("generate", help="generate H&E from text / RNA / a reference image (any subset)")
    _common(g)
    g.add_argument("--text", help="clinical / morphological text")
    g.add_argument("--label", help="a class label of the model (its caption from model_index.json)")
    g.add_argument("--rna", help="FILE.h5ad:OBS, TABLE.csv:SLIDE_ID or a gene<TAB>value FILE.tsv")
    g.add_argument("--ref", help="reference image (reference-image stream)")
    g.add_argument("--n", type=int, default=4, help="images per condition row (default 4)")
    _guidance_flags(g, "text=3,rna=2")
    g.add_argument("--guidance-interval", default="0,1", help="apply guidance for t in LOW,HIGH (default 0,1)")
    g.add_argument("--batch", help="CSV/JSONL of conditions (columns text, rna, ref, label, n, seed, guidance)")
    g.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    g.set_defaults(func=run_generate)

    v = subparsers.add_parser("vary", help="new tissue like a reference image (reference stream and/or SDEdit strength)")
    _common(v)
    v.add_argument("--image", required=True, help="the reference image (another size is centre-cropped and "
                                                  "resized to the model's for --strength < 1)")
    v.add_argument("--strength", type=float, default=1.0, help="SDEdit noise level in [0,1]; 1 = from pure noise")
    v.add_argument("--no-reference", action="store_true", help="do not feed the image to the reference stream")
    v.add_argument("--text", help="optional text condition")
    v.add_argument("--n", type=int, default=4)
    _guidance_flags(v, "image=2,text=3")
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
                       help="readout = one pass (posterior mean; takes no guidance); sample = integrate the flow"
                            + ("; sdedit = unpaired recipe" if name == "translate" else ""))
        s.add_argument("--text", help="optional text condition (models with a text stream)")
        _guidance_flags(s, "text=2")
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
    _guidance_flags(a, "text=2,image=1.5")
    a.add_argument("--strength", type=float, default=None, help="SDEdit from the real images (optional)")
    a.add_argument("--no-reference", action="store_true", help="do not use real images as references")
    a.add_argument("--limit-real", type=int, default=None, help="use only the first N real images per class")
    a.add_argument("--batch-size", type=int, default=8)
    a.set_defaults(func=run_augment)


def _load(args):
    from .pipeline import Pipeline

    return Pipeline.from_pretrained(args.model, device=args.device)


def _report(out) -> None:
    for note in getattr(out, "notes", []) or []:
        print(note, file=sys.stderr)


# ------------------------------------------------------------------------------------- commands
# Each command checks everything it can (paths, rows, genes, image modes, options) before _load.
def run_generate(args) -> int:
    from ..errors import MupdError
    from . import preflight
    from .inputs import read_condition_rows

    facts = preflight.model_facts(args.model)
    preflight.check_run_options(out=args.out, steps=args.steps, sampler=args.sampler, seed=args.seed, n=args.n)
    require_positive(args.batch_size, "--batch-size")
    interval = _interval(args.guidance_interval)
    scales = parse_scales(args.scale)
    if args.batch:
        if any(getattr(args, k) for k in ("text", "rna", "ref", "label")):
            raise MupdError("--batch takes its conditions from the file; drop --text/--rna/--ref/--label")
        rows = read_condition_rows(args.batch)
    else:
        rows = [{k: getattr(args, k) for k in ("text", "rna", "ref", "label") if getattr(args, k) is not None}]
    for r, row in enumerate(rows):
        try:
            given = preflight.check_generate_row(facts, row)
            preflight.check_modality_options(facts, given, parse_guidance(row.get("guidance", args.guidance)), scales)
            require_positive(int(row.get("n", args.n)), "n")
        except MupdError as exc:
            raise MupdError(f"{args.batch} row {r + 1}: {exc}" if args.batch else str(exc)) from None
    pipe = _load(args)
    out_dir = Path(args.out)
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
                      steps=args.steps, sampler=args.sampler, guidance=parse_guidance(row.get("guidance", args.guidance)),
                      guidance_interval=interval, scales=scales, seed=row_seed, batch_size=args.batch_size,
                      progress=True)
        _report(result)
        result.save(out_dir, prefix=prefix)
        written += n
        seed = row_seed + n
    print(f"wrote {written} images to {out_dir} (parameters in each PNG and in {out_dir / 'manifest.csv'})")
    return 0


def require_positive(value: int, flag: str) -> None:
    from ..errors import require

    require(isinstance(value, int) and value >= 1, f"{flag} must be a positive integer, got {value}")


def run_vary(args) -> int:
    from ..errors import require
    from . import preflight
    from .inputs import load_image

    load_image(args.image, what="--image")  # the file first: a missing file is the real problem
    facts = preflight.model_facts(args.model)
    preflight.check_run_options(out=args.out, steps=args.steps, sampler=args.sampler, seed=args.seed, n=args.n)
    strength = preflight.check_strength_option(args.strength, args.sampler, args.steps)
    stream = facts.has_stream("image") and not args.no_reference
    require(stream or strength < 1.0,
            f"--strength 1 would ignore the image: the model {facts.path} has no reference-image stream "
            f"(streams: {facts.modalities}){' and --no-reference is set' if args.no_reference else ''}; "
            "use --strength below 1 (e.g. 0.6) to keep the image's layout")
    guidance, scales = parse_guidance(args.guidance), parse_scales(args.scale)
    preflight.check_modality_options(facts, preflight.given_conditions(facts, text=args.text, image_stream=stream),
                                     guidance, scales)
    pipe = _load(args)
    result = pipe.vary(args.image, strength=strength, n=args.n, use_reference=not args.no_reference,
                       text=args.text, steps=args.steps, sampler=args.sampler, guidance=guidance, scales=scales,
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
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise MupdError(f"source folder {path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            out += found
        elif path.exists():
            out.append(path)
        else:
            raise MupdError(f"source image {path} does not exist; check the path")
    return out


def _check_dense(args, task: str):
    """stain/translate: sources, method for this model, strength, guidance, tile — before loading."""
    from ..errors import MupdError, require
    from . import preflight
    from .options import check_mode_options

    sources = _sources(args.image)
    facts = preflight.model_facts(args.model)
    preflight.check_run_options(out=args.out, steps=args.steps, sampler=args.sampler, seed=args.seed)
    require_positive(args.batch_size, "--batch-size")
    paired = facts.source_channels > 0
    method = args.method or ("sample" if paired else "sdedit")
    if task == "stain":
        require(paired, f"{facts.path} is a '{facts.task}' model without source-image input channels; 'stain' "
                        "needs a stain fine-tune (configs/stain-*.yaml); for an unpaired domain use 'mupd translate'")
    elif paired:
        require(method in ("sample", "readout"),
                f"{facts.path} is a paired translation fine-tune; --method must be sample or readout, not {method}")
    else:
        require(method == "sdedit", f"{facts.path} has no source-image input channels, so only --method sdedit "
                                    "(the unpaired recipe) applies")
    require(args.tile is None or args.tile == facts.image_size,
            f"--tile must equal the model's image size ({facts.image_size} px); got {args.tile}")
    guidance, scales = parse_guidance(args.guidance), parse_scales(args.scale)
    strength = getattr(args, "strength", None) if method == "sdedit" else None
    try:
        check_mode_options(method, guidance=guidance, steps=args.steps, sampler=args.sampler, strength=strength)
    except MupdError as exc:
        raise MupdError(f"{'--strength' if 'strength' in str(exc) else '--method ' + method}: {exc}") from None
    stream = (not paired) and facts.has_stream("image")
    preflight.check_modality_options(facts, preflight.given_conditions(facts, text=args.text, image_stream=stream),
                                     guidance, scales)
    preflight.check_source_images(facts, sources)
    return sources, method, guidance, scales


def _run_dense(args, task: str) -> int:
    sources, method, guidance, scales = _check_dense(args, task)
    from .output import append_manifest, manifest_row
    from .pngmeta import save_png

    pipe = _load(args)
    out_dir = Path(args.out)
    rows = []
    for source in sources:
        target = out_dir / f"{source.stem}.png"
        if target.exists():  # resume
            continue
        kwargs = dict(method=method, steps=args.steps, sampler=args.sampler, seed=args.seed, tile=args.tile,
                      overlap=args.overlap, batch_size=args.batch_size, text=args.text, guidance=guidance,
                      scales=scales, progress=True)
        if task == "stain":
            result = pipe.stain(source, **kwargs)
        else:
            result = pipe.translate(source, strength=args.strength, **kwargs)
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
    from ..errors import require
    from . import preflight

    data = Path(args.data)
    require(data.is_dir(), f"--data {data} is not a folder; pass a class-per-folder dataset (FOLDER/<class>/*.png)")
    facts = preflight.model_facts(args.model)
    preflight.check_run_options(out=args.out, steps=args.steps, sampler=args.sampler, seed=args.seed)
    require_positive(args.per_class, "--per-class")
    require_positive(args.batch_size, "--batch-size")
    if args.strength is not None:
        preflight.check_strength_option(args.strength, args.sampler, args.steps)
    guidance, scales = parse_guidance(args.guidance), parse_scales(args.scale)
    given = {"text"} if facts.labels and facts.has_stream("text") else set()
    given |= {"image"} if facts.has_stream("image") and not args.no_reference else set()
    preflight.check_modality_options(facts, given, guidance, scales)
    from .augment import augment

    pipe = _load(args)
    manifest = augment(pipe, args.data, args.out, per_class=args.per_class, steps=args.steps, sampler=args.sampler,
                       guidance=guidance, scales=scales, seed=args.seed, strength=args.strength,
                       use_reference=not args.no_reference, batch_size=args.batch_size, limit_real=args.limit_real)
    print(f"wrote the synthetic dataset to {args.out} (manifest {manifest})")
    return 0
