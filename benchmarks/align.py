"""How good is the offline shared space on real data (CPU, a few minutes).

her2st: train image<->RNA on sections B4, C2, C3, C4 and test on the held-out section C5:
image->expression Recall@K against chance, and per-gene Pearson r of a ridge read-out from image
features for the 50 most variable genes (trained tower vs the same tower at random init).
PCam: the offline image encoder trained on image<->caption pairs (train split), evaluated on the
valid split: zero-shot accuracy from two text prompts and linear-probe accuracy (vs random init).

    python benchmarks/align.py --out benchmarks/results/align_cpu.json [--quick]

Slide level (``--slide``; writes e.g. benchmarks/results/align_slide.json): the presets of
``mupd align train``. ``tangle-pcam``: PCam bags <-> report, 3 seeds, held-out bags from PCam valid
(other slides): zero-shot metastasis calls, and mupd.heads heads (5-fold over the held-out bags) — a
linear head on the frozen aligned slide embedding vs a linear head on the bag-mean tile features and a
supervised ABMIL head on the tiles (the peers, same bags, same folds). ``mstar-slide`` (her2st
pseudo-slides, bag <-> bulk RNA <-> templated report; test sections C4, C5) and ``mstar-distill`` (stage 2
from it): retrieval against chance, heads and ridge read-outs, before/after distillation.

    python benchmarks/align.py --slide --out benchmarks/results/align_slide.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mupd.align.config import preset
from mupd.align.data import load_pairs
from mupd.align.evaluate import (check_disjoint, embed_all, linear_probe_accuracy, recall_at_k, ridge_gene_pearson,
                                 zero_shot_accuracy)
from mupd.align.train import build_model, train_align
from mupd.errors import MupdError


@torch.no_grad()
def tower_features(tower, items, batch_size=256) -> np.ndarray:
    """Pooled tower tokens (before the projection head): the features a read-out sees."""
    tower.eval()
    out = []
    for i in range(0, len(items), batch_size):
        tokens, mask = tower.encode(items[i: i + batch_size])
        out.append(tokens.mean(1))
    return torch.cat(out).numpy()


def her2st(total_samples: int, workdir: Path) -> dict:
    config = preset("her2st-image-rna", total_samples=total_samples, train_sections=["B4", "C2", "C3", "C4"],
                    test_sections=["C5"])
    t0 = time.time()
    train = load_pairs(config, "train")
    test = load_pairs(config, "test", vocabulary=train.vocabulary)
    check_disjoint(train.groups, test.groups)
    load_s = time.time() - t0
    random_model = build_model(config, train)  # same seed, untrained: the baseline
    t0 = time.time()
    model = train_align(config, workdir / "her2st", progress=False, data=train)
    train_s = time.time() - t0
    img, rna = embed_all(model.towers["image"], test.items["image"]), embed_all(model.towers["rna"], test.items["rna"])
    ks = (1, 5, 10, 50)
    result = {
        "config": {"train_sections": config.train_sections, "test_sections": config.test_sections, "n_genes": config.n_genes,
                   "image_size": config.image_size, "total_samples": total_samples, "batch_size": config.batch_size},
        "n_train_spots": len(train), "n_test_spots": len(test),
        "image_to_rna_recall": recall_at_k(img, rna, ks), "rna_to_image_recall": recall_at_k(rna, img, ks),
        "chance_recall": {k: k / len(test) for k in ks},
        "load_seconds": round(load_s, 1), "train_seconds": round(train_s, 1),
    }
    # top-50 variable genes of the training spots (in the vocabulary's normalised space)
    y_train, y_test = train.items["rna"].numpy(), test.items["rna"].numpy()
    top = np.argsort(-y_train.var(0))[:50]
    genes = [train.vocabulary.genes[i] for i in top]
    for name, tower in (("trained", model.towers["image"]), ("random_init", random_model.towers["image"])):
        x_train, x_test = tower_features(tower, train.items["image"]), tower_features(tower, test.items["image"])
        r = ridge_gene_pearson(x_train, y_train[:, top], x_test, y_test[:, top], alpha=10.0)
        result[f"ridge_pearson_{name}"] = {"mean": float(r.mean()), "median": float(np.median(r)),
                                           "n_positive": int((r > 0).sum()), "max": float(r.max())}
        if name == "trained":
            result["ridge_pearson_trained"]["per_gene"] = {g: round(float(v), 4) for g, v in zip(genes, r)}
    return result


def pcam(total_samples: int, per_class: int, workdir: Path) -> dict:
    config = preset("pcam-image-text", total_samples=total_samples, max_per_class=per_class)
    train = load_pairs(config, "train")
    valid = load_pairs(preset("pcam-image-text", max_per_class=None), "test")  # the whole valid split
    random_model = build_model(config, train)
    t0 = time.time()
    model = train_align(config, workdir / "pcam", progress=False, data=train)
    train_s = time.time() - t0
    prompts = embed_all(model.towers["text"], list(valid.class_prompts))
    img_valid = embed_all(model.towers["image"], valid.items["image"])
    result = {"n_train": len(train), "n_valid": len(valid), "prompts": list(valid.class_prompts),
              "zero_shot_accuracy": zero_shot_accuracy(img_valid, prompts, valid.labels), "train_seconds": round(train_s, 1),
              "config": {"image_size": config.image_size, "total_samples": total_samples, "per_class": per_class}}
    for name, tower in (("trained", model.towers["image"]), ("random_init", random_model.towers["image"])):
        x_train, x_valid = tower_features(tower, train.items["image"]), tower_features(tower, valid.items["image"])
        result[f"linear_probe_accuracy_{name}"] = linear_probe_accuracy(x_train, train.labels, x_valid, valid.labels)
    return result


def _load() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def slide_pcam(seeds, scale: float, workdir: Path) -> dict:
    from mupd.align.slide_data import load_slides
    from mupd.align.slide_eval import bag_means, evaluate_slides
    from mupd.align.slide_train import train_slide
    from mupd.heads.crossval import HeadSpec, classification_cv
    from mupd.heads.evaluate import classification_metrics
    from mupd.heads.fit import FitConfig
    from mupd.heads.splits import patient_folds

    config = preset("tangle-pcam", total_samples=int(8000 * scale))
    train, test = load_slides(config, "train"), load_slides(config, "test")
    runs = []
    for seed in seeds:
        t0 = time.time()
        model = train_slide(preset("tangle-pcam", total_samples=config.total_samples, seed=seed), workdir / f"pcam{seed}",
                            train, progress=False)
        runs.append({"seed": seed, "train_seconds": round(time.time() - t0, 1), **evaluate_slides(model, train, test)})
    labels = np.asarray(test.levels["tumour"])
    ids = np.array([f"bag{i:04d}" for i in range(len(test))])
    spec = HeadSpec(head="abmil", loss="ce", fit=FitConfig(epochs=40, lr=1e-3, batch_size=16))
    pred = classification_cv(test.features.numpy(), labels, 2, ids, patient_folds(ids, labels, 5), spec, (0,),
                             mask=test.mask.numpy())
    abmil = classification_metrics(pred, ["normal", "tumour"])

    def mean(key):
        return float(np.mean([key(r) for r in runs]))

    return {"preset": config.to_dict(), "n_train_bags": len(train), "n_test_bags": len(test), "runs": runs,
            "summary": {"zero_shot_tumour": mean(lambda r: r["zero_shot_tumour"]),
                        "heads_linear_auc_slide_embedding": mean(lambda r: r["heads_linear"]["slide_embedding"]["tumour"]["macro_auc"]),
                        "heads_linear_auc_bag_mean_features": runs[0]["heads_linear"]["bag_mean_features"]["tumour"]["macro_auc"],
                        "heads_abmil_auc_tiles_supervised": abmil["macro_auc"]["value"],
                        "heads_abmil_balanced_accuracy": abmil["balanced_accuracy"]["value"]}}


def slide_her2st(scale: float, workdir: Path) -> dict:
    from mupd.align.slide_data import load_slides, tile_encoder
    from mupd.align.slide_eval import evaluate_distilled, evaluate_slides
    from mupd.align.slide_train import distill_slide, load_tile_encoder, train_slide

    sections = dict(train_sections=["B4", "C2", "C3"], test_sections=["C4", "C5"])
    config = preset("mstar-slide", total_samples=int(12000 * scale), **sections)
    encoder = tile_encoder(config)
    train = load_slides(config, "train", encoder=encoder)
    test = load_slides(config, "test", vocabulary=train.vocabulary, report_rule=train.report_rule, encoder=encoder)
    t0 = time.time()
    model = train_slide(config, workdir / "mstar", train, encoder=encoder, progress=False)
    stage1 = {"train_seconds": round(time.time() - t0, 1), **evaluate_slides(model, train, test)}
    # Stage 2 as first written (plain cosine to the aggregator's ReLU tile features): the guard is expected to stop it.
    uncentred = preset("mstar-distill", total_samples=int(1536 * scale), stage1=str(workdir / "mstar"),
                       distill_centre=False, **sections)
    try:
        distill_slide(uncentred, workdir / "distill-uncentred", train, progress=False)
        guard = "completed without a collapse"
    except MupdError as exc:
        guard = str(exc)
    distill = preset("mstar-distill", total_samples=int(1536 * scale), stage1=str(workdir / "mstar"), **sections)
    t0 = time.time()
    distiller = distill_slide(distill, workdir / "distill", train, progress=False)
    history = json.loads((workdir / "distill" / "trainer_state.json").read_text())["history"]
    stage2 = {"train_seconds": round(time.time() - t0, 1), "uncentred_distillation": guard,
              "student_health_first_last": [history[0]["health"], history[-1]["health"]],
              **evaluate_distilled(load_tile_encoder(workdir / "mstar", config), distiller.student, train, test)}
    return {"preset": config.to_dict(), "stage1": stage1, "stage2": stage2,
            "data": "her2st pseudo-slides (random contiguous 16-spot regions; bulk = summed counts; report templated "
                    "from marker terciles), held-out sections C4, C5 cut into disjoint regions"}


def slide_main(args) -> None:
    scale = 0.1 if args.quick else 1.0
    started, load_start = time.time(), _load()
    with tempfile.TemporaryDirectory() as tmp:
        report = {"benchmark": "align-slide", "hardware": f"{platform.machine()} CPU, {args.threads} torch threads",
                  "torch": torch.__version__, "loadavg_start": load_start,
                  "pcam": slide_pcam((0, 1, 2), scale, Path(tmp)), "her2st": slide_her2st(scale, Path(tmp))}
    report["loadavg_end"], report["total_seconds"] = _load(), round(time.time() - started, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"pcam": report["pcam"]["summary"],
                      "her2st_slide_to_rna": report["her2st"]["stage1"].get("slide->rna")}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true", help="fewer samples (smoke run)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core machine)")
    parser.add_argument("--slide", action="store_true", help="the slide-level presets instead (align_slide.json)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.slide:
        return slide_main(args)
    scale = 0.1 if args.quick else 1.0
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        report = {
            "benchmark": "align", "hardware": f"{platform.machine()} CPU, {args.threads} torch threads",
            "torch": torch.__version__,
            "her2st": her2st(int(8192 * scale), Path(tmp)),
            "pcam": pcam(int(12288 * scale), 1000 if not args.quick else 200, Path(tmp)),
        }
    report["total_seconds"] = round(time.time() - started, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    summary = {"her2st_image_to_rna_R@10": report["her2st"]["image_to_rna_recall"][10],
               "chance@10": report["her2st"]["chance_recall"][10],
               "ridge_mean_r": report["her2st"]["ridge_pearson_trained"]["mean"],
               "pcam_zero_shot": report["pcam"]["zero_shot_accuracy"],
               "pcam_linear_probe": report["pcam"]["linear_probe_accuracy_trained"]}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
