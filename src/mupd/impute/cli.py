"""``mupd impute train | predict | evaluate``: histology -> expression.

    mupd impute train --method aligned-ridge --sections B4 C2 C3 C4 --out runs/impute/ridge
    mupd impute predict runs/impute/ridge --sections C5 --out c5.h5ad --maps ERBB2 --report runs/impute/c5
    mupd impute evaluate --protocol her2st-loso --out loso.json
    mupd impute cycle MODEL --generator RUN/checkpoint --sections C5 --out cycle.json   (see cycle_cli)
    mupd impute slide-train --features FEATURES_DIR_OR_SHARDS --table bulk.csv --out runs/mil
"""

from __future__ import annotations

import json

METHOD_NAMES = ("mean", "pixels-ridge", "untrained-ridge", "aligned-ridge", "aligned-retrieval", "finetuned",
                "encoder-ridge", "finetuned-context")  # = runner.METHODS (not imported: the CLI root must not import torch)


def register(subparsers) -> None:
    parser = subparsers.add_parser("impute", help="predict expression from H&E (spot level) under named protocols")
    sub = parser.add_subparsers(dest="impute_command", metavar="ACTION")
    train = sub.add_parser("train", help="fit a spot-level model on her2st sections and save it")
    train.add_argument("--method", default="aligned-ridge", choices=METHOD_NAMES)
    train.add_argument("--data", help="her2st folder (default: the sample data's her2st/)")
    train.add_argument("--sections", nargs="+", help="training sections (default: every section with an image)")
    train.add_argument("--genes", type=int, default=250, help="panel size: top-k genes of the training spots")
    train.add_argument("--gene-rule", default="variance", choices=("variance", "mean"))
    train.add_argument("--align-samples", type=int, default=2048, help="contrastive pairs for the aligned towers")
    train.add_argument("--epochs", type=int, default=3, help="finetuned: epochs")
    train.add_argument("--crop-px", type=int, default=224, help="spot crop side in full-resolution pixels (default 224; "
                       "the her2st generator of 'mupd demo --dataset her2st' sees 128)")
    train.add_argument("--genes-from", metavar="PIPELINE_DIR", help="draw the panel from this generator's gene vocabulary "
                       "(for 'mupd impute cycle'); --genes then counts among those genes")
    _encoder_arguments(train)
    train.add_argument("--out", required=True, help="model folder to write")
    train.set_defaults(func=run_train)
    predict = sub.add_parser("predict", help="predict a section (or an AnnData/Visium file) -> .h5ad, maps, report")
    predict.add_argument("model", help="a folder written by 'mupd impute train'")
    predict.add_argument("--data", help="her2st folder (default: the sample data's her2st/)")
    predict.add_argument("--sections", nargs="+", help="her2st sections to predict")
    predict.add_argument("--h5ad", help="predict the spots of this AnnData/Visium file instead of her2st sections")
    predict.add_argument("--image", help="with --h5ad: the H&E image its obsm['spatial'] refers to")
    predict.add_argument("--out", required=True, help="output .h5ad")
    predict.add_argument("--maps", nargs="*", default=[], metavar="GENE", help="genes to map (default: the 3 best on this data)")
    predict.add_argument("--report", metavar="DIR", help="write maps.png and report.html here")
    predict.set_defaults(func=run_predict)
    evaluate = sub.add_parser("evaluate", help="run every method and baseline under a named protocol -> JSON")
    evaluate.add_argument("--protocol", required=True, help="her2st-loso or her2st-lopo")
    evaluate.add_argument("--methods", nargs="+", default=list(METHOD_NAMES[:-2]), choices=METHOD_NAMES)
    evaluate.add_argument("--data", help="her2st folder (default: the sample data's her2st/)")
    evaluate.add_argument("--genes", type=int, default=250)
    evaluate.add_argument("--gene-rule", default="variance", choices=("variance", "mean"))
    evaluate.add_argument("--align-samples", type=int, default=2048)
    evaluate.add_argument("--epochs", type=int, default=3)
    _encoder_arguments(evaluate)
    evaluate.add_argument("--out", required=True, help="result JSON")
    evaluate.set_defaults(func=run_evaluate)
    _register_slide(sub)
    from .cycle_cli import register_cycle

    register_cycle(sub)
    parser.set_defaults(func=lambda args: (parser.print_help(), 1)[1])


def _register_slide(sub) -> None:
    train = sub.add_parser("slide-train", help="attention-MIL: bulk expression from TRIDENT/CLAM tile-feature .h5 files")
    train.add_argument("--features", required=True, help="folder of <slide_id>.h5 files (features, coords) or a "
                       "'mupd data encode' shard folder (tiles grouped by the manifest's slide_id)")
    train.add_argument("--manifest", help="with encode shards: the tile manifest (id, slide_id, x, y) if index.json's source moved")
    train.add_argument("--table", required=True, help="CSV/TSV with slide_id or case_id and <GENE>_rnaseq (or gene) columns")
    train.add_argument("--join", default="slide_id", choices=("slide_id", "case_id"))
    train.add_argument("--normalisation", default="none", choices=("none", "log1p_cpm", "log_tpm"),
                       help="of the table's values: none for TCGA z-scores, log1p_cpm for raw counts")
    train.add_argument("--genes", type=int, help="keep the top-k genes by variance (default: all)")
    train.add_argument("--epochs", type=int, default=40)
    train.add_argument("--out", required=True)
    train.set_defaults(func=run_slide_train)
    predict = sub.add_parser("slide-predict", help="predict bulk expression for every .h5 feature file -> CSV")
    predict.add_argument("model", help="a folder written by 'mupd impute slide-train'")
    predict.add_argument("--features", required=True, help="as for slide-train")
    predict.add_argument("--manifest", help="as for slide-train")
    predict.add_argument("--out", required=True, help="CSV: slide_id, one column per gene")
    predict.set_defaults(func=run_slide_predict)


def run_slide_train(args) -> int:
    from .slide_data import load_bags
    from .slide_model import save_slide_model, train_slide_model

    data = load_bags(args.features, args.table, join=args.join, manifest=args.manifest)
    model, config = train_slide_model(data.bags, data.values, data.genes, normalisation=args.normalisation,
                                      n_genes=args.genes, epochs=args.epochs)
    config.update(train_slides=data.ids, join=args.join, unmatched=data.unmatched, tile_features=data.features)
    save_slide_model(args.out, model, config)
    print(f"wrote {args.out}: {len(data.ids)} slides, {len(config['genes'])} genes, final loss {config['train_loss'][-1]:.3f}; "
          f"unmatched {data.unmatched['n_feature_files_unmatched']} files / {data.unmatched['n_table_rows_unmatched']} rows")
    return 0


def run_slide_predict(args) -> int:
    import pandas as pd

    from .slide_data import load_bags
    from .slide_model import load_slide_model, predict_slides, read_slide_config

    config = read_slide_config(args.model)
    data = load_bags(args.features, expected_dim=config["in_dim"], manifest=args.manifest)  # widths checked before weights load
    model, config = load_slide_model(args.model)
    frame = pd.DataFrame(predict_slides(model, config, data.bags), columns=config["genes"])
    frame.insert(0, "slide_id", data.ids)
    frame.to_csv(args.out, index=False)
    print(f"wrote {args.out}: {len(data.ids)} slides x {len(config['genes'])} genes ({config['normalisation']} scale)")
    return 0


def _encoder_arguments(parser) -> None:
    parser.add_argument("--context-pool", default="mean", choices=("mean", "attention"),
                        help="finetuned-context: pool the neighbouring spots' features by mean or attention")
    parser.add_argument("--context-k", type=int, default=4, help="finetuned-context: nearest spots of the same section")
    parser.add_argument("--encoder", help="encoder-ridge: a registry image encoder (uni, virchow2, timm, plip, ...)")
    parser.add_argument("--encoder-path", help="encoder-ridge: its local weights folder (or hf-hub:ID to download)")


def _settings(args):
    from pathlib import Path

    from ..errors import require
    from .runner import RunSettings

    if args.encoder:  # name and folder checked before any spot is loaded
        from ..encoders import registry

        registry.entry("image", args.encoder)
        require(args.encoder_path is None or str(args.encoder_path).startswith("hf-hub:") or
                Path(args.encoder_path).is_dir(), f"--encoder-path {args.encoder_path} is not a folder")
    require(args.context_k >= 1, f"--context-k must be >= 1, got {args.context_k}")
    return RunSettings(align_samples=args.align_samples, finetune_epochs=args.epochs, encoder=args.encoder,
                       encoder_path=args.encoder_path, context_pool=args.context_pool, context_k=args.context_k)


def run_train(args) -> int:
    from ..errors import require
    from .model import SpotModel
    from .spots import check_sections, her2st_root, load_her2st_spots

    require(args.genes >= 1, f"--genes must be >= 1, got {args.genes}")
    require(args.crop_px >= 16, f"--crop-px must be >= 16, got {args.crop_px}")
    root = her2st_root(args.data)
    sections = check_sections(root, args.sections)
    settings = _settings(args)
    candidates = None
    if args.genes_from:
        from .cycle_cli import pipeline_vocabulary

        candidates = list(pipeline_vocabulary(args.genes_from).genes)
    table = load_her2st_spots(root, sections, settings.image_size, args.crop_px)
    model = SpotModel.fit(args.method, table, n_genes=args.genes, gene_rule=args.gene_rule, settings=settings, progress=True,
                          candidates=candidates)
    model.save(args.out)
    print(f"wrote {args.out}: {args.method} on {len(table)} spots of {sections}, {len(model.genes)} genes "
          f"{json.dumps(model.config.get('readout', {}), default=str)[:200]}")
    return 0


def _check_predict_args(args):
    """Everything checkable from files and names, before any model weights load."""
    from pathlib import Path

    from ..checkpoint import read_json
    from ..errors import require
    from .model import FORMAT

    require(Path(args.model).is_dir(), f"imputation model folder {args.model} does not exist; create one with 'mupd impute train'")
    config = read_json(Path(args.model) / "impute_config.json")
    require(config.get("format") == FORMAT, f"{args.model}/impute_config.json is not a mupd imputation model")
    require(str(args.out).endswith(".h5ad"), f"--out must name a .h5ad file, not {args.out}")
    unknown = [g for g in args.maps if g not in set(config["genes"])]
    require(not unknown, f"--maps genes {unknown} are not in the model's {len(config['genes'])}-gene panel "
                         f"(e.g. {config['genes'][:6]}); see {args.model}/impute_config.json")
    require(not (args.h5ad and args.sections), "give either --sections (her2st) or --h5ad, not both")
    require(args.h5ad is None or Path(args.h5ad).exists(), f"--h5ad {args.h5ad} does not exist")
    return config


def run_predict(args) -> int:
    from pathlib import Path

    import numpy as np

    from . import protocols
    from .anndata_io import write_predictions
    from .model import SpotModel
    from .report import html_report, spatial_maps
    from .spots import check_sections, her2st_root, load_anndata_spots, load_her2st_spots

    config = _check_predict_args(args)
    if args.h5ad:
        table = load_anndata_spots(args.h5ad, args.image, config["image_size"])
    else:
        root = her2st_root(args.data)
        table = load_her2st_spots(root, check_sections(root, args.sections), config["image_size"], config.get("crop_px") or 224)
    seen = sorted(set(table.section) & set(config["train_sections"]))
    if seen:
        print(f"note: sections {seen} were used for training; these predictions are not held-out")
    model = SpotModel.load(args.model)
    predicted = model.predict(table.images, table)
    measured = None
    if table.meta.get("values") == "raw counts":
        present = set(table.genes)
        if all(g in present for g in model.genes):
            measured = protocols.normalised_panel(table.counts, table.genes, model.genes, sample_ids=table.ids)
    info = {k: v for k, v in config.items() if k != "genes"}
    info.update(model=str(args.model), held_out=not seen)
    write_predictions(args.out, predicted, model.genes, table.ids, table.section, table.coords, model_info=info,
                      measured=measured, protocol={"gene_selection": config.get("gene_selection"),
                                                   "train_sections": config["train_sections"]})
    print(f"wrote {args.out}: {len(table)} spots x {len(model.genes)} genes")
    if args.report:
        show = list(args.maps)
        if not show and measured is not None:
            from .evaluate import gene_metrics

            show = [model.genes[k] for k in np.argsort(-gene_metrics(measured, predicted)["pearson"])[:3]]
        show = show or list(model.genes[:3])
        folder = Path(args.report)
        png = spatial_maps(folder / "maps.png", table.coords, predicted, model.genes, show, measured=measured,
                           title=f"{config['method']} trained on {config['train_sections']}, shown: {sorted(set(table.section))}")
        html_report(folder / "report.html", png, model_info=info, predicted=predicted, genes=model.genes, measured=measured)
        print(f"wrote {png} and {folder / 'report.html'}")
    return 0


def run_evaluate(args) -> int:
    from pathlib import Path

    from ..checkpoint import write_json
    from . import protocols, runner
    from .spots import her2st_root

    protocol = protocols.get(args.protocol, n_genes=args.genes, gene_rule=args.gene_rule)
    root = her2st_root(args.data)
    protocols.check_data(protocol, root)
    settings = _settings(args)
    table = runner.load_table(protocol, root, settings.image_size)
    result = runner.run_protocol(protocol, table, methods=args.methods, settings=settings)
    write_json(Path(args.out), result)
    for method, entry in result["methods"].items():
        s = entry["summary"]
        print(f"{method:<18} pearson {s['mean_pearson']['mean']:.3f} ± {s['mean_pearson']['std']:.3f}  "
              f"r>0 {s['fraction_r_positive']['mean']:.2f}  mse {s['mean_mse']['mean']:.3f}")
    print(f"wrote {args.out}")
    return 0
