"""``mupd heads train | evaluate``: fit a downstream head with patient-level cross-validation and
write metrics.json + report.html; re-score a run folder from its saved predictions."""

from __future__ import annotations

import argparse

TASKS = ("survival", "classification", "mil")


def register(subparsers) -> None:
    heads = subparsers.add_parser("heads", help="downstream heads: survival / classification / MIL with k-fold CV by patient")
    sub = heads.add_subparsers(dest="heads_command", metavar="SUBCOMMAND")
    p = sub.add_parser("train", help="cross-validate a head and write OUT/metrics.json, predictions.csv, report.html",
                       description="Fit a head on frozen inputs with k-fold CV split by patient and write a report. "
                                   "Each fitted head is saved under OUT/folds/ as it finishes; running the same command "
                                   "again skips the finished folds (resume), and `mupd heads evaluate OUT --cohort TABLE` "
                                   "applies them to new patients. "
                                   "Example: mupd heads train --cohort kirc --features genes --head mlp --loss nll --out runs/kirc")
    p.add_argument("--task", choices=TASKS, default="survival")
    p.add_argument("--cohort", default=None, help="TCGA cohort name from the sample data (blca, brca, kirc, ...) or a "
                   "tcga_<cohort>_all_clean.csv.gz-style table (survival, classification)")
    p.add_argument("--features", default="genes",
                   help="genes: the table's <GENE>_rnaseq z-scores; pathways: SurvPath pathway scores; clinical: age and "
                        "sex; or a fusion joined by '+', e.g. genes+clinical (columns concatenated)")
    p.add_argument("--head", choices=("linear", "mlp", "pathway-tokens", "lifelines-cox", "abmil", "transmil"), default="mlp",
                   help="lifelines-cox: lifelines' penalised CoxPHFitter (survival only); abmil/transmil: --task mil")
    p.add_argument("--loss", choices=("nll", "cox"), default="nll", help="survival loss: discrete-time NLL or Cox partial likelihood")
    p.add_argument("--label", default="oncotree_code", help="classification label column (default oncotree_code)")
    p.add_argument("--min-count", type=int, default=10, help="classification: drop classes with fewer patients (default 10)")
    p.add_argument("--pcam", default=None, help="--task mil: PCam folder (default: the sample data's pcam/)")
    p.add_argument("--bags", type=int, default=200, help="--task mil: number of bags (default 200)")
    p.add_argument("--bag-size", type=int, default=16, help="--task mil: tiles per bag (default 16)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seeds", default="0", help="comma list of seeds (default 0)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 1e-3; 1e-2 for pathway-tokens, "
                   "whose attention over 331 pathway tokens learns slowly at 1e-3)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--bins", type=int, default=4, help="time intervals of the NLL head (default 4, as PORPOISE)")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--penalizer", type=float, default=1.0, help="lifelines-cox L2 penalizer (default 1.0)")
    p.add_argument("--genesets", default=None, help="pathway gene sets (default: the sample data's SurvPath combine_signatures.csv)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-report", action="store_true", help="write metrics.json and predictions.csv only")
    p.set_defaults(func=run_train)
    e = sub.add_parser("evaluate", help="recompute a run's metrics/report from predictions.csv, or apply its fitted "
                       "heads to a new cohort (--cohort, --out) without refitting",
                       description="Without --cohort: re-score RUN from its predictions.csv. With --cohort TABLE --out DIR: "
                                   "apply the heads RUN fitted (all folds and seeds averaged, or --fold/--seed) to TABLE.")
    e.add_argument("run", help="a folder written by `mupd heads train`")
    e.add_argument("--cohort", default=None, help="a new table (or TCGA cohort name) with the same input columns")
    e.add_argument("--out", default=None, help="with --cohort: the folder for predictions.csv, metrics.json, report.html")
    e.add_argument("--fold", type=int, default=None, help="with --cohort: apply only this fold's head (default: all)")
    e.add_argument("--seed", type=int, default=None, help="with --cohort: apply only this seed's heads (default: all)")
    e.add_argument("--no-report", action="store_true")
    e.set_defaults(func=run_evaluate)
    heads.set_defaults(func=lambda args: (heads.print_help(), 1)[1])


def _spec(args: argparse.Namespace):
    from .crossval import HeadSpec
    from .fit import FitConfig

    from ..errors import require
    from .data import check_feature_kind

    check_feature_kind(args.features)
    for name in ("epochs", "batch_size", "bins", "hidden"):
        require(getattr(args, name) >= 1, f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    lr = args.lr if args.lr is not None else (1e-2 if args.head == "pathway-tokens" else 1e-3)
    require(lr > 0, f"--lr must be > 0, got {lr}")
    fit = FitConfig(epochs=args.epochs, lr=lr, weight_decay=args.weight_decay, batch_size=args.batch_size)
    return HeadSpec(head=args.head, loss=args.loss, bins=args.bins, hidden=args.hidden, penalizer=args.penalizer, fit=fit)


def run_train(args: argparse.Namespace) -> int:
    from ..errors import require
    from .run import headline, run_classification, run_survival, seeds_arg

    seeds = seeds_arg(args.seeds)
    spec = _spec(args)
    if args.task == "mil":
        from .bags import run_pcam_mil

        require(args.head in ("abmil", "transmil"), "--task mil needs --head abmil or transmil")
        summary = run_pcam_mil(args.out, pcam=args.pcam, spec=spec, n_bags=args.bags, bag_size=args.bag_size,
                               folds=args.folds, seeds=seeds, report=not args.no_report)
    else:
        require(args.cohort is not None, f"--task {args.task} needs --cohort (a TCGA cohort name such as kirc, or a table path)")
        require(args.head not in ("abmil", "transmil"), f"--head {args.head} reads bags of tiles; use --task mil")
        if args.task == "survival":
            summary = run_survival(args.cohort, args.out, features=args.features, spec=spec, folds=args.folds,
                                   seeds=seeds, genesets=args.genesets, report=not args.no_report)
        else:
            require(args.head != "lifelines-cox", "lifelines-cox is a survival model; pick linear, mlp or pathway-tokens")
            summary = run_classification(args.cohort, args.out, label=args.label, features=args.features, spec=spec,
                                         folds=args.folds, seeds=seeds, min_count=args.min_count,
                                         genesets=args.genesets, report=not args.no_report)
    print(f"{summary['title']}: {headline(summary)}")
    if summary.get("resumed_fits"):
        print(f"reused {summary['resumed_fits']} finished fit(s) from {args.out}/folds (same config and data)")
    print(f"wrote {args.out}/metrics.json" + ("" if args.no_report else f" and {args.out}/report.html"))
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from ..errors import require
    from .run import evaluate_run, headline

    if args.cohort is not None:
        from .apply import evaluate_new

        require(args.out is not None, "--cohort needs --out (a new folder for the predictions and report)")
        summary = evaluate_new(args.run, args.cohort, args.out, fold=args.fold, seed=args.seed, report=not args.no_report)
        print(f"{summary['title']}: {headline(summary)}")
        print(f"wrote {args.out}/predictions.csv, metrics.json" + ("" if args.no_report else ", report.html"))
        return 0
    require(args.out is None and args.fold is None and args.seed is None, "--out/--fold/--seed go with --cohort")
    summary = evaluate_run(args.run, report=not args.no_report)
    print(f"{summary['title']}: {headline(summary)}")
    return 0
