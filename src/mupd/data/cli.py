"""``mupd data tile|index|encode|vocab`` and ``mupd vae train``.

    mupd data tile SLIDE_OR_FOLDER --out DIR --mpp 1.0 --size 256        # WSI -> tiles + coords + manifest
    mupd data index SRC --out MANIFEST.csv [--caption-template pcam]      # folder/her2st/visium/deepliif -> manifest
    mupd data encode MANIFEST_OR_FOLDER --vae PATH_OR_ID --out SHARDS     # -> latents (+ conditions) in shards
    mupd data vocab SRC --out gene_vocabulary.json --normalisation log1p_cpm --top-k 2000
    mupd vae train --data FOLDER --out DIR [--preset small --size 64 --samples 4096]
"""

from __future__ import annotations

import json
import sys


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="bring data in: tile slides, index datasets, encode shards")
    sub = data.add_subparsers(dest="data_command", metavar="STEP")

    tile = sub.add_parser("tile", help="tile whole-slide images (OpenSlide) with a tissue mask")
    tile.add_argument("slides", help="a slide file or a folder of slides")
    tile.add_argument("--out", required=True)
    res = tile.add_mutually_exclusive_group()
    res.add_argument("--mpp", type=float, help="output resolution in um/px (e.g. 0.5 for 20x)")
    res.add_argument("--magnification", type=float, help="output magnification (e.g. 20)")
    res.add_argument("--level", type=int, help="read this pyramid level as is (for slides without mpp)")
    tile.add_argument("--size", type=int, default=256, help="tile side in output pixels (default 256)")
    tile.add_argument("--overlap", type=int, default=0, help="overlap between tiles in output pixels")
    tile.add_argument("--min-tissue", type=float, default=0.5, help="minimum tissue fraction per tile (default 0.5)")
    tile.add_argument("--assume-mpp", type=float, default=None, help="level-0 um/px to ASSUME when the slide has no mpp metadata")
    tile.add_argument("--coords", default=None, help="folder of TRIDENT/CLAM <slide>.h5 coordinate files to use instead of tiling")
    tile.add_argument("--no-progress", action="store_true")
    tile.set_defaults(func=run_tile)

    index = sub.add_parser("index", help="write a manifest (CSV/Parquet) of a dataset")
    index.add_argument("source", help="patch folder, her2st folder, AnnData .h5ad/.h5, DeepLIIF folder or manifest")
    index.add_argument("--out", required=True, help="manifest path (.csv, .tsv or .parquet)")
    index.add_argument("--kind", default="auto", choices=["auto", "folder", "her2st", "visium", "deepliif", "manifest"])
    index.add_argument("--caption-template", default=None, help="captions from labels: a preset (pcam)")
    index.add_argument("--captions", default=None, help="CSV/JSONL/JSON caption file joined by id")
    index.add_argument("--expression", default=None, help="bulk expression table (TCGA CSV) joined by --key")
    index.add_argument("--key", default="slide_id", help="join key of --expression: slide_id or case_id")
    index.add_argument("--image", default=None, help="Visium: the H&E image the spot coordinates refer to")
    index.add_argument("--sections", default=None, help="her2st: comma-separated sections (default: all with images)")
    index.add_argument("--crop", type=int, default=None, help="spot crop side in image pixels (her2st default 224)")
    index.add_argument("--size", type=int, default=None, help="resize spot crops to this side")
    index.add_argument("--limit", type=int, default=None,
                       help="her2st: spots per section; otherwise at most N per class, a seeded sample (seed 0)")
    index.add_argument("--skip-bad", action="store_true",
                       help="leave out (and list) image files that cannot be decoded instead of refusing the dataset")
    index.add_argument("--no-progress", action="store_true")
    index.set_defaults(func=run_index)

    enc = sub.add_parser("encode", help="encode a dataset into shards of VAE latents + condition embeddings")
    enc.add_argument("source", help="manifest (.csv/.parquet), patch folder, tiling output or DeepLIIF folder")
    enc.add_argument("--vae", required=True, help="autoencoder: a LatentAutoencoder folder, taef2 (the offline pretrained one) or hub:ORG/NAME (downloads)")
    enc.add_argument("--out", required=True)
    enc.add_argument("--source-vae", default=None, help="autoencoder of the source domain (paired data; default --vae)")
    enc.add_argument("--text-encoder", default=None, help="registered text encoder name (captions -> tokens)")
    enc.add_argument("--image-encoder", default=None, help="registered image encoder name (patch -> tokens)")
    enc.add_argument("--align-encoder", default=None,
                     help="registered image encoder whose patch tokens become alignment targets (align_patches/align_cls, float16)")
    enc.add_argument("--encoder-arg", action="append", default=[], metavar="MODALITY.KEY=VALUE",
                     help="keyword for an encoder factory, e.g. text.width=64 or align.path=models/uni (repeatable)")
    enc.add_argument("--vocabulary", default=None, help="gene vocabulary JSON: expression -> rna_values")
    enc.add_argument("--shard-size", type=int, default=256)
    enc.add_argument("--size", type=int, default=None, help="resize images to this side before encoding")
    enc.add_argument("--batch-size", type=int, default=32)
    enc.add_argument("--caption-template", default=None)
    enc.add_argument("--captions", default=None)
    enc.add_argument("--limit", type=int, default=None, help="at most N per class, a seeded sample (seed 0)")
    enc.add_argument("--skip-bad", action="store_true", help="skip (and report) unreadable images instead of stopping")
    enc.add_argument("--no-progress", action="store_true")
    enc.set_defaults(func=run_encode)

    vocab = sub.add_parser("vocab", help="fit a gene vocabulary (normalisation + z-score) on a dataset's expression")
    vocab.add_argument("source", help="manifest with expression, her2st folder, AnnData file or TCGA table")
    vocab.add_argument("--out", required=True)
    vocab.add_argument("--normalisation", default="log1p_cpm", choices=["log1p_cpm", "log_tpm", "none"])
    vocab.add_argument("--top-k", type=int, default=None)
    vocab.add_argument("--no-zscore", action="store_true")
    vocab.set_defaults(func=run_vocab)
    _register_vae(subparsers)


def _register_vae(subparsers) -> None:
    vae = subparsers.add_parser("vae", help="latent autoencoder tools")
    vsub = vae.add_subparsers(dest="vae_command", metavar="STEP")
    train = vsub.add_parser("train", help="train a small AutoencoderKL from scratch on patch data (resumable)")
    train.add_argument("--data", required=True, help="patch folder or manifest")
    train.add_argument("--out", required=True)
    train.add_argument("--preset", default="small", help="tiny (2x down), small (4x), f8 (8x)")
    train.add_argument("--latent-channels", type=int, default=4)
    train.add_argument("--size", type=int, default=64)
    train.add_argument("--samples", type=int, default=4096, help="training images seen (default 4096)")
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--kl-weight", type=float, default=1e-6)
    train.add_argument("--loss", default="l1", choices=["l1", "mse"])
    train.add_argument("--holdout", type=int, default=32)
    train.add_argument("--limit", type=int, default=None, help="patches per class to read")
    train.add_argument("--checkpoint-every", type=int, default=1024)
    train.add_argument("--max-minutes", type=float, default=None)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--no-progress", action="store_true")
    train.set_defaults(func=run_vae_train)


def run_tile(args) -> int:
    from pathlib import Path

    from ..errors import require

    require(Path(args.slides).exists(), f"{args.slides} does not exist; give a slide file or a folder of slides")
    require(args.coords is None or Path(args.coords).is_dir(), f"--coords {args.coords} is not a folder")
    require(args.size >= 8 and 0 <= args.overlap < args.size, "--size must be >= 8 and 0 <= --overlap < --size")
    require(0 <= args.min_tissue <= 1, f"--min-tissue must lie in [0, 1], not {args.min_tissue}")
    from .tiling import tile_slides

    manifest, records = tile_slides(args.slides, args.out, mpp=args.mpp, magnification=args.magnification,
                                    level=args.level, size=args.size, overlap=args.overlap, min_tissue=args.min_tissue,
                                    assume_mpp=args.assume_mpp, coords_dir=args.coords, progress=not args.no_progress)
    print(f"{len(records)} tiles -> {manifest}")
    return 0


def load_any(args):
    """Records of any supported source (shared by index and vocab)."""
    from pathlib import Path

    from ..errors import MupdError
    from . import patch_folder, read_manifest

    src = Path(args.source)
    kind = getattr(args, "kind", "auto")
    if kind == "auto":
        if src.suffix in (".h5ad", ".h5"):
            kind = "visium"
        elif src.is_file():
            kind = "manifest"
        elif (src / "ST-cnts").is_dir():
            kind = "her2st"
        else:
            from .stains import is_deepliif_folder

            kind = "deepliif" if is_deepliif_folder(src) else "folder"
    if kind == "manifest":
        if src.suffix in (".gz",) or src.name.endswith(".csv.gz"):
            from .tables import load_bulk_table, table_records

            return table_records(load_bulk_table(src, key=getattr(args, "key", "slide_id")))
        return read_manifest(src)
    if kind == "folder":
        return patch_folder(src)  # --limit is applied by the caller (seeded, per class)
    if kind == "her2st":
        from .spatial import load_her2st

        sections = args.sections.split(",") if getattr(args, "sections", None) else None
        return load_her2st(src, sections, crop=getattr(args, "crop", None) or 224, size=getattr(args, "size", None),
                           max_spots=getattr(args, "limit", None)).records()
    if kind == "visium":
        from .spatial import load_visium

        return load_visium(src, getattr(args, "image", None), crop=getattr(args, "crop", None), size=getattr(args, "size", None)).records()
    if kind == "deepliif":
        from .stains import deepliif_records

        return deepliif_records(src, limit=getattr(args, "limit", None))
    raise MupdError(f"unknown source kind {kind}")


def _check_out(out: str, suffixes=(".csv", ".tsv", ".parquet", ".pq")) -> None:
    from pathlib import Path

    from ..errors import require

    path = Path(out)
    require(path.suffix.lower() in suffixes, f"--out {out} must end in {', '.join(suffixes)}")
    require(not path.is_dir(), f"--out {out} is a folder; give the manifest file to write (e.g. {path / 'manifest.csv'})")


def _check_images(records, args) -> list:
    """Decode every image file once; refuse the dataset with a count and the first paths, or (with
    --skip-bad) leave those records out and say so."""
    from ..errors import MupdError
    from .records import find_unreadable

    bad = find_unreadable(records, progress=not getattr(args, "no_progress", False))
    if not bad:
        return records
    first = "; ".join(bad[:3])
    if not args.skip_bad:
        raise MupdError(f"{args.source}: {len(bad)} of {len(records)} image files cannot be decoded, first: {first}. "
                        "Replace them, or pass --skip-bad to leave them out")
    bad_ids = {item.split(" (", 1)[0] for item in bad}
    print(f"skipped {len(bad)} unreadable image files, first: {first}", file=sys.stderr)
    return [r for r in records if r.id not in bad_ids]


def run_index(args) -> int:
    from pathlib import Path

    from .captions import apply_template, join_captions
    from .records import expression_companion, manifest_image_dir, records_summary, sample_per_class, write_manifest

    _check_out(args.out)
    records = load_any(args)
    if args.limit is not None and getattr(args, "kind", "auto") != "her2st" and not (Path(args.source) / "ST-cnts").is_dir():
        records = sample_per_class(records, args.limit)
    records = _check_images(records, args)
    if args.caption_template:
        apply_template(records, args.caption_template)
    if args.captions:
        print("captions:", json.dumps(join_captions(records, args.captions)))
    if args.expression:
        from .tables import join_expression, load_bulk_table

        print("expression:", json.dumps(join_expression(records, load_bulk_table(args.expression, key=args.key))))
    path = write_manifest(records, args.out)
    print(f"{path}: {json.dumps(records_summary(records))}")
    for extra in (manifest_image_dir(path), expression_companion(path)):  # say what else was written, and where
        if extra.exists():
            files = list(extra.iterdir()) if extra.is_dir() else [extra]
            size = sum(f.stat().st_size for f in files) / 2**20
            print(f"  also wrote {extra} ({len(files)} file{'s' * (len(files) != 1)}, {size:.1f} MB)")
    return 0


def _check_encode_args(args) -> None:
    """Paths, names and sizes of ``data encode``, checked before torch or any model loads."""
    from pathlib import Path

    from ..errors import MupdError, require

    require(Path(args.source).exists(), f"data source {args.source} does not exist")
    for flag, value in (("--vae", args.vae), ("--source-vae", args.source_vae)):
        if value and value != "taef2" and not value.startswith("hub:") and not Path(value).exists():
            raise MupdError(f"{flag} {value}: autoencoder folder does not exist; train one first (`mupd vae train "
                            f"--data FOLDER --out {value}`), use 'taef2' (offline, pretrained) or name a hub model as hub:ORG/NAME")
    for flag, value in (("--vocabulary", args.vocabulary), ("--captions", args.captions)):
        require(value is None or Path(value).is_file(), f"{flag} {value} does not exist")
    require(args.shard_size > 0 and args.batch_size > 0, "--shard-size and --batch-size must be positive")
    require(args.size is None or args.size >= 8, f"--size must be at least 8 px, not {args.size}")
    require(args.limit is None or args.limit >= 1, f"--limit must be at least 1, not {args.limit}")
    require(not Path(args.out).is_file(), f"--out {args.out} is a file; give a folder for the shards")
    for item in args.encoder_arg:
        key, sep, _ = item.partition("=")
        modality, dot, _ = key.partition(".")
        if not (sep and dot) or modality not in ("text", "image", "rna", "align"):
            raise MupdError(f"--encoder-arg {item!r} must look like MODALITY.KEY=VALUE with MODALITY text, image, rna or align")
    names = [(m, n) for m, n in (("text", args.text_encoder), ("image", args.image_encoder), ("image", args.align_encoder)) if n]
    if names:
        from ..encoders import registry

        for modality, name in names:
            registry.entry(modality, name)  # an unknown name lists the known ones


def run_encode(args) -> int:
    _check_encode_args(args)
    from .encode import EncodeJob, encode_dataset

    kwargs: dict = {}
    for item in args.encoder_arg:
        key, sep, value = item.partition("=")
        modality, dot, name = key.partition(".")
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
        kwargs.setdefault(modality, {})[name] = value
    job = EncodeJob(args.source, args.vae, args.out, shard_size=args.shard_size, size=args.size, batch_size=args.batch_size,
                    source_vae=args.source_vae, text_encoder=args.text_encoder, image_encoder=args.image_encoder,
                    align_encoder=args.align_encoder, encoder_kwargs=kwargs, vocabulary=args.vocabulary, caption_template=args.caption_template,
                    captions=args.captions, limit=args.limit, on_error="skip" if args.skip_bad else "raise")
    out = encode_dataset(job, progress=not args.no_progress)
    if (out / "index.json").exists():
        index = json.loads((out / "index.json").read_text())
        print(f"{out}: {index['n']} records in {len(index['shards'])} shards; skipped: {json.dumps(index['skipped'])}")
    return 0


def run_vocab(args) -> int:
    import numpy as np

    from ..errors import require
    from .expression import GeneVocabulary

    records = [r for r in load_any(args) if r.expression is not None]
    require(bool(records), f"{args.source} carries no expression")
    genes = records[0].genes
    require(all(r.genes == genes for r in records), f"{args.source}: records use different gene lists")
    vocab = GeneVocabulary.fit(np.stack([r.expression for r in records]), genes, args.normalisation,
                               zscore=not args.no_zscore, top_k=args.top_k, sample_ids=[r.id for r in records])
    vocab.save(args.out)
    print(f"{args.out}: {vocab!r} from {len(records)} samples")
    return 0


def run_vae_train(args) -> int:
    from pathlib import Path

    from ..errors import require

    require(Path(args.data).exists(), f"--data {args.data} does not exist; give a class-per-folder patch folder or a manifest")
    require(not Path(args.out).is_file(), f"--out {args.out} is a file; give a folder for the autoencoder")
    for flag, value, low in (("--size", args.size, 8), ("--samples", args.samples, 1), ("--batch-size", args.batch_size, 1),
                             ("--latent-channels", args.latent_channels, 1)):
        require(value >= low, f"{flag} must be at least {low}, not {value}")
    require(args.limit is None or args.limit >= 1, f"--limit must be at least 1, not {args.limit}")
    from ..encoders.vae_train import VAETrainConfig, train_vae

    cfg = VAETrainConfig(args.data, args.out, preset=args.preset, latent_channels=args.latent_channels, size=args.size,
                         samples=args.samples, batch_size=args.batch_size, lr=args.lr, kl_weight=args.kl_weight,
                         loss=args.loss, holdout=args.holdout, limit=args.limit, checkpoint_every=args.checkpoint_every,
                         seed=args.seed, max_minutes=args.max_minutes)
    metrics = train_vae(cfg, progress=not args.no_progress)
    print(f"{args.out}: PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.3f} on {metrics['n_holdout']} held-out "
          f"patches after {metrics['images_seen']} images", file=sys.stdout)
    return 0
