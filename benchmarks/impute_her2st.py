"""Histology -> expression on her2st under both named protocols, every method and baseline in one run.

    OMP_NUM_THREADS=1 python benchmarks/impute_her2st.py [--quick] [--parts spot slide context cycle]
        [--generator RUN/checkpoint]   # the cycle part needs an RNA-conditioned pipeline ('mupd demo --dataset her2st')

Running some --parts only updates those keys of an existing JSON (the others stay as measured).

Writes benchmarks/results/impute_her2st.json: the resolved protocols, per-fold and mean ± std over
folds of per-gene Pearson / Spearman / MSE / fraction r > 0, the chosen hyper-parameters per fold,
and the wall-clock of each part on this machine (CPU, 1 thread). Data: the 5 her2st sections with an
H&E image (B4, C2-C5; 1,015 spots) — published her2st results use 32-36 sections (8 patients)
and 785 or 250 genes, so the figures are comparable in kind, not in value.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mupd.impute import evaluate, protocols, runner
from mupd.impute.features import pixel_features
from mupd.impute.slide_protocol import run_slide_protocol
from mupd.settings import sample_data_dir

OUT = Path(__file__).parent / "results" / "impute_her2st.json"
PARTS = ("spot", "slide", "context", "cycle")


def compact(result: dict) -> None:
    """Keep the JSON small: fold-level figures and each method's top genes stay; the per-gene lists
    go (``mupd impute evaluate --out`` keeps them)."""
    for method in result["methods"].values():
        for fold in method["folds"]:
            fold.pop("per_gene", None)


def summary_line(result: dict) -> dict:
    return {m: f"{v['summary']['mean_pearson']['mean']:.3f}±{v['summary']['mean_pearson']['std']:.3f}"
            for m, v in result["methods"].items()}


def run_spot(table, args, settings) -> dict:
    results, shared = {}, {}  # shared: identical training folds across protocols reuse their trained models
    for name in ("her2st-loso", "her2st-lopo"):
        protocol = protocols.get(name, n_genes=args.genes)
        result = runner.run_protocol(protocol, table, settings=settings, cache=shared)
        compact(result)
        result["paired_vs_pixels_ridge"] = evaluate.paired_deltas(result["methods"], "pixels-ridge")
        results[name] = result
        print(name, summary_line(result), flush=True)
    # The same folds with the gene panel chosen by mean expression (the "most highly expressed genes"
    # panels of the TRIPLEX line); the folds' alignments are reused, so only the read-outs are refitted.
    by_mean = {}
    for name in ("her2st-loso", "her2st-lopo"):
        protocol = protocols.get(name, n_genes=args.genes, gene_rule="mean")
        result = runner.run_protocol(protocol, table, methods=["mean", "pixels-ridge", "untrained-ridge", "aligned-ridge"],
                                     settings=settings, cache=shared)
        compact(result)
        result["paired_vs_pixels_ridge"] = evaluate.paired_deltas(result["methods"], "pixels-ridge")
        by_mean[name] = result
        print(name, "(genes by mean)", summary_line(result), flush=True)
    return {"protocols": results, "protocols_genes_by_mean": by_mean}


def run_slide(table, args) -> dict:
    slide = {}
    tiles = pixel_features(table.images)  # fold-independent tile features (no training involved)
    for name in ("her2st-loso", "her2st-lopo"):
        slide[name] = run_slide_protocol(protocols.get(name, n_genes=args.genes), table, tiles,
                                         region=16 if args.quick else 32, epochs=5 if args.quick else 40,
                                         feature_name="raw pixels 16x16 RGB of each spot crop")
        compact(slide[name])
        print("slide", name, summary_line(slide[name]), flush=True)
    return {"slide_level": slide}


def run_context(table, args, settings) -> dict:
    """finetuned vs finetuned-context on the same folds in one process: the paired per-fold delta and
    the time ratio (each fold's alignment is trained once and shared by both)."""
    out, shared = {}, {}
    for name in ("her2st-loso", "her2st-lopo"):
        result = runner.run_protocol(protocols.get(name, n_genes=args.genes), table, methods=["finetuned", "finetuned-context"],
                                     settings=settings, cache=shared)
        compact(result)
        result["paired_vs_finetuned"] = evaluate.paired_deltas(result["methods"], "finetuned")
        sec = result["seconds"]
        result["time_ratio_context_over_plain"] = round(sec["finetuned-context"] / max(sec["finetuned"], 1e-9), 2)
        out[name] = result
        print("context", name, summary_line(result), f"time x{result['time_ratio_context_over_plain']}", flush=True)
    return {"neighbour_context": out}


def run_cycle_part(her2st: Path, generator: str | None, *, quick: bool) -> dict:
    """The cycle check with the generator's own split (train B4 C2 C3 C4, held-out C5 for the her2st demo):
    an imputation model per reader (aligned-ridge, pixels-ridge) on the generator's genes and crop
    scale; each read at RNA scale 1 (as trained) and 0 (the RNA-ignoring control)."""
    from mupd.checkpoint import read_json
    from mupd.impute.cycle import PipelineGenerator, cycle_check, measured_panel
    from mupd.impute.cycle_cli import pipeline_vocabulary
    from mupd.impute.model import SpotModel
    from mupd.impute.spots import load_her2st_spots
    from mupd.pipelines import Pipeline

    if not generator:
        return {"skipped": "no --generator given (train one with: mupd demo --dataset her2st --out RUN)"}
    generator = Path(generator)
    metrics_path = generator.parent / "metrics.json"
    demo = read_json(metrics_path) if metrics_path.exists() else {}
    recipe = demo.get("recipe", {})
    train_sections, held = recipe.get("train_sections", ["B4", "C2", "C3", "C4"]), recipe.get("held_out_sections", ["C5"])
    crop, size = recipe.get("crop_px", 128), recipe.get("size_px", 64)
    genes = list(pipeline_vocabulary(generator).genes)
    settings = runner.RunSettings(image_size=size, align_samples=256 if quick else 2048)
    train = load_her2st_spots(her2st, train_sections, size, crop)
    test = load_her2st_spots(her2st, held, size, crop)
    if quick:
        keep = np.linspace(0, len(test) - 1, 24).astype(int)
        test.ids, test.section = [test.ids[i] for i in keep], [test.section[i] for i in keep]
        test.images, test.counts, test.coords = test.images[keep], test.counts[keep], test.coords[keep]
    pipe = Pipeline.from_pretrained(generator)
    out = {"generator": {"folder": str(generator), "images_seen": demo.get("generator", {}).get("images_seen"),
                         "train_seconds": demo.get("generator", {}).get("seconds"), "train_sections": train_sections,
                         "held_out_sections": held, "crop_px": crop, "size_px": size,
                         "made_by": "mupd demo --dataset her2st --minutes 6 --threads 1 (CPU)"},
           "readers": {}}
    for method in ("aligned-ridge", "pixels-ridge"):
        t0 = time.perf_counter()
        model = SpotModel.fit(method, train, n_genes=len(genes), settings=settings, candidates=genes, progress=True)
        measured = measured_panel(test, model.genes)
        entry = {"fit_seconds": round(time.perf_counter() - t0, 1), "panel_genes": len(model.genes)}
        for label, scales in (("rna_scale_1", None), ("rna_scale_0_control", {"rna": 0.0})):
            gen = PipelineGenerator(pipe, model.genes, steps=4 if quick else 20, guidance=2.0, scales=scales)
            result, _ = cycle_check(model, test.images, test.ids, gen, measured=measured, n_permutations=200)
            g = result["per_gene"]
            print(f"cycle {method} {label}: per-gene r {g['mean_r']['value']:.3f} [{g['mean_r']['low']:.3f}, "
                  f"{g['mean_r']['high']:.3f}] vs shuffled {g['null']['mean']:.3f}", flush=True)
            entry[label] = result
        out["readers"][method] = entry
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a smoke run: 60 spots per section, short training")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--genes", type=int, default=250)
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    parser.add_argument("--no-slide", action="store_true", help="skip the slide-level (pseudo-slide MIL) part")
    parser.add_argument("--generator", help="cycle part: an RNA-conditioned pipeline folder (mupd demo --dataset her2st)")
    args = parser.parse_args(argv)
    parts = [p for p in args.parts if not (p == "slide" and args.no_slide)]
    torch.set_num_threads(1)
    root = sample_data_dir()
    if root is None:
        print("sample data not found; set MUPD_SAMPLE_DATA", file=sys.stderr)
        return 2
    settings = runner.RunSettings(align_samples=256 if args.quick else 2048, finetune_epochs=1 if args.quick else 3)
    out = Path(args.out)
    payload = json.loads(out.read_text()) if out.exists() and set(parts) != set(PARTS) else {}
    start = time.perf_counter()
    table = None
    if {"spot", "slide", "context"} & set(parts):
        table = runner.load_table(protocols.get("her2st-loso", n_genes=args.genes), root / "her2st", settings.image_size,
                                  max_spots=60 if args.quick else None)
        payload["load_seconds"] = round(time.perf_counter() - start, 1)
    part_seconds, load_average = payload.get("part_seconds", {}), payload.get("load_average", {})
    for part in parts:
        t0, load0 = time.perf_counter(), os.getloadavg()
        if part == "spot":
            payload.update(run_spot(table, args, settings))
        elif part == "slide":
            payload.update(run_slide(table, args))
        elif part == "context":
            payload.update(run_context(table, args, settings))
        else:
            payload["cycle"] = run_cycle_part(root / "her2st", args.generator, quick=args.quick)
        part_seconds[part] = round(time.perf_counter() - t0, 1)
        load_average[part] = {"start": [round(x, 2) for x in load0], "end": [round(x, 2) for x in os.getloadavg()]}
    payload.update({
        "benchmark": "impute_her2st", "quick": args.quick,
        "machine": {"cpu_threads_used": 1, "cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "torch": torch.__version__, "note": "shared 2-core machine under load from other jobs"},
        "part_seconds": part_seconds, "load_average": load_average,
        "published_reference": PUBLISHED,
    })
    if set(parts) == set(PARTS) or "total_seconds" not in payload:
        payload["total_seconds"] = round(time.perf_counter() - start, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1))
    print(f"wrote {out} (parts {parts}) in {round(time.perf_counter() - start, 1)} s")
    return 0


PUBLISHED = {
    "note": "published her2st numbers use other protocols; listed for orientation, not as a like-for-like comparison",
    "verified_from_public_code": {
        "Hist2ST (github biomed-AI/Hist2ST: dataset.py, README.md)": "her2st leave-one-section-out over names[1:33] of "
            "the sorted ST-cnts list (32 sections of 8 patients); genes from data/her_hvg_cut_1000.npy with n_genes=785 in "
            "the README's model call; targets log(library-size-normalised counts). HisToGene's code is the base it adapts.",
        "TRIPLEX (github NEXGEM/TRIPLEX: config/her2st/TRIPLEX.yaml, preprocess/get_geneset.py)": "her2st num_genes 250, "
            "num_k 8 (8-fold cross-validation), 5 neighbours; its gene-set script ranks highly expressed genes by total "
            "counts (HEG) or scanpy HVGs. Its config/GSE240429/BLEEP.yaml runs BLEEP on GSE240429 (human liver Visium).",
        "this sample data (../shared/data/README.md)": "35 her2st sections in ST-cnts (patients A-H), 5 with an H&E "
            "image (B4, C2-C5), 1,015 spots with both (this run loads 1,015)",
    },
    "not_verified": "the published mean Pearson values (roughly 0.05-0.3 over ST-Net, HisToGene, Hist2ST, THItoGene, "
        "TRIPLEX, depending on method and gene set) are quoted from memory: the papers are not offline and neither "
        "../shared/mupd-notes.md nor the sample-data README gives them; check the papers before citing",
    "BLEEP (Xie et al. 2023)": "evaluated on a liver Visium data set, not her2st",
}


if __name__ == "__main__":
    sys.exit(main())
