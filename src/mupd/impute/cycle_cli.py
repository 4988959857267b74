"""``mupd impute cycle``: the cycle check of a trained imputation model through an RNA-conditioned
generator, on held-out her2st spots -> JSON (+ a PNG of real crops above their generated patches).

    mupd demo --dataset her2st --out runs/her2st                 # the generator (checkpoint/)
    mupd impute train --method aligned-ridge --sections B4 C2 C3 C4 --crop-px 128 \\
        --genes-from runs/her2st/checkpoint --genes 5000 --out runs/impute/cycle-model
    mupd impute cycle runs/impute/cycle-model --generator runs/her2st/checkpoint --sections C5 --out cycle.json
"""

from __future__ import annotations

import os
from pathlib import Path


def register_cycle(sub) -> None:
    p = sub.add_parser("cycle", help="image -> predicted RNA -> RNA-conditioned generation -> predicted RNA again, "
                                     "matched vs shuffled pairs")
    p.add_argument("model", help="a folder written by 'mupd impute train' (best with --genes-from GENERATOR)")
    p.add_argument("--generator", required=True, help="an RNA-conditioned pipeline folder (the checkpoint/ of 'mupd demo --dataset her2st')")
    p.add_argument("--data", help="her2st folder (default: the sample data's her2st/)")
    p.add_argument("--sections", nargs="+", required=True, help="held-out her2st sections whose spots go round the cycle")
    p.add_argument("--max-spots", type=int, help="at most this many spots (evenly spaced), default all")
    p.add_argument("--steps", type=int, default=20, help="sampler steps (default 20)")
    p.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance on the RNA (default 2)")
    p.add_argument("--rna-scale", type=float, default=1.0, help="RNA stream scale (0 = a generator that ignores RNA: the control)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--permutations", type=int, default=200, help="shuffled pairings for the null (default 200)")
    p.add_argument("--min-overlap", type=float, default=0.1, help="minimum fraction of the generator's vocabulary the panel must cover")
    p.add_argument("--out", required=True, help="result JSON")
    p.add_argument("--report", metavar="DIR", help="write pairs.png (real crops above generated patches) here")
    p.set_defaults(func=run_cycle)


def pipeline_vocabulary(folder: str | os.PathLike):
    """The gene vocabulary of a pipeline folder, read without loading any weights."""
    from ..data.expression import GeneVocabulary
    from ..errors import require

    folder = Path(folder)
    require((folder / "model_index.json").exists(), f"{folder} is not a mupd pipeline folder (no model_index.json); "
                                                    "pass the checkpoint/ written by 'mupd demo --dataset her2st' or 'mupd train'")
    require((folder / "gene_vocabulary.json").exists(), f"{folder} has no gene_vocabulary.json: it is not an RNA-conditioned model")
    return GeneVocabulary.load(folder / "gene_vocabulary.json")


def _checked(args):
    """Everything checkable from files and names, before any weights load: (config, table, held_out)."""
    from ..checkpoint import read_json
    from ..errors import require
    from .cycle import gene_overlap
    from .model import FORMAT
    from .spots import check_sections, her2st_root, load_her2st_spots

    require(str(args.out).endswith(".json"), f"--out must name a .json file, not {args.out}")
    require(args.steps >= 1 and args.permutations >= 10, "--steps must be >= 1 and --permutations >= 10")
    require(args.rna_scale >= 0, f"--rna-scale must be >= 0, got {args.rna_scale}")
    require(Path(args.model).is_dir(), f"imputation model folder {args.model} does not exist; create one with 'mupd impute train'")
    config = read_json(Path(args.model) / "impute_config.json")
    require(config.get("format") == FORMAT, f"{args.model}/impute_config.json is not a mupd imputation model")
    require(not config.get("context"), f"{args.model} reads neighbouring spots (--context); a generated patch has none")
    gene_overlap(config["genes"], pipeline_vocabulary(args.generator).genes, min_overlap=args.min_overlap, where=str(args.generator))
    root = her2st_root(args.data)
    table = load_her2st_spots(root, check_sections(root, args.sections), config["image_size"], config.get("crop_px") or 224)
    if args.max_spots and args.max_spots < len(table):
        import numpy as np

        keep = np.linspace(0, len(table) - 1, args.max_spots).round().astype(int)
        table.ids, table.section = [table.ids[i] for i in keep], [table.section[i] for i in keep]
        table.images, table.counts, table.coords = table.images[keep], table.counts[keep], table.coords[keep]
    seen = sorted(set(table.section) & set(config["train_sections"]))
    return config, table, not seen


def run_cycle(args) -> int:
    from ..checkpoint import write_json
    from ..pipelines import Pipeline
    from .cycle import PipelineGenerator, cycle_check, measured_panel, pairs_png
    from .model import SpotModel

    config, table, held_out = _checked(args)
    if not held_out:
        print(f"note: sections {sorted(set(table.section))} include training sections of the imputation model; not held-out")
    model = SpotModel.load(args.model)
    pipe = Pipeline.from_pretrained(args.generator)
    generator = PipelineGenerator(pipe, model.genes, steps=args.steps, guidance=args.guidance or None,
                                  scales=None if args.rna_scale == 1.0 else {"rna": args.rna_scale}, min_overlap=args.min_overlap)
    measured = measured_panel(table, model.genes)
    result, generated = cycle_check(model, table.images, table.ids, generator, measured=measured, seed=args.seed,
                                    n_permutations=args.permutations)
    result.update(model={"path": str(args.model), "method": config["method"], "train_sections": config["train_sections"],
                         "crop_px": config.get("crop_px"), "image_size": config["image_size"], "panel_genes": len(model.genes)},
                  sections=sorted(set(table.section)), held_out=held_out, seed=args.seed)
    write_json(Path(args.out), result)
    g, s = result["per_gene"], result["per_spot"]
    print(f"cycle on {result['n_spots']} spots, {result['n_genes']} genes: per-gene r {g['mean_r']['value']:.3f} "
          f"[{g['mean_r']['low']:.3f}, {g['mean_r']['high']:.3f}] vs shuffled {g['null']['mean']:.3f} (p {g['null']['p_value']:.3f}); "
          f"per-spot r {s['mean_r']['value']:.3f} vs shuffled {s['null']['mean']:.3f}")
    if args.report:
        png = pairs_png(Path(args.report) / "pairs.png", table.images, generated, table.ids)
        print(f"wrote {png}")
    print(f"wrote {args.out}")
    return 0
