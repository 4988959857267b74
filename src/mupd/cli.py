"""The ``mupd`` command. Each concept folder contributes its sub-commands through ``register``.

A ``MupdError`` (bad input a user can fix) is printed as one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import platform
import sys

from . import __version__
from .errors import MupdError

# module -> it defines ``register(subparsers)``, adding parsers whose defaults set ``func``.
COMMAND_MODULES = (
    "mupd.train.cli",  # demo, train
    "mupd.pipelines.cli",  # generate, vary, stain, translate, augment
    "mupd.metrics.cli",  # evaluate
    "mupd.align.cli",  # align
    "mupd.data.cli",  # data tile|index|encode, vae train
    "mupd.impute.cli",
    "mupd.heads.cli",
    "mupd.app.cli",
)

# Commands that compute; each gets ``--threads`` here (one place) and the threads are set before it runs.
HEAVY_COMMANDS = ("train", "demo", "evaluate", "generate", "vary", "stain", "translate", "augment",
                  "data tile", "data index", "data encode", "vae train", "align train", "align evaluate",
                  "impute train", "impute predict", "impute evaluate", "impute slide-train", "impute slide-predict",
                  "heads train")

OPTIONAL_PACKAGES = {
    "timm": "encoders",
    "transformers": "encoders",
    "openslide": "wsi",
    "torch_fidelity": "fidelity",
    "pyarrow": "parquet",
    "musk": "(MUSK's own package)",
    "conch": "(CONCH's own package)",
}


def _info(args: argparse.Namespace) -> int:
    import torch

    from .settings import sample_data_dir, settings

    print(f"mupd {__version__}  (python {platform.python_version()}, {platform.machine()})")
    cuda = torch.version.cuda or "none"
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    print(f"torch {torch.__version__}  cuda build {cuda}  visible GPUs {gpus}  device {settings.torch_device()}")
    print(f"sample data: {sample_data_dir() or 'not found (set MUPD_SAMPLE_DATA)'}")
    print("optional packages:")
    for module, extra in OPTIONAL_PACKAGES.items():
        if importlib.util.find_spec(module) is not None:
            state = "yes"
        else:
            state = f"no  {extra}" if extra.startswith("(") else f"no  (pip install 'mupd[{extra}]')"
        print(f"  {module:<15} {state}")
    from .encoders import registry as enc

    print("registered encoders: commercial use (yes/no/check), licence of the weights or code; derived from")
    for entry in enc.all_entries():
        print(f"  {entry.name:<24} {entry.commercial:<6} {entry.licence}; derived from: {entry.base}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mupd", description="Multimodal generative pathology (MuPD).")
    parser.add_argument("--version", action="version", version=f"mupd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser("info", help="version, torch/CUDA, optional adapters and their licences")
    info.set_defaults(func=_info)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    _add_threads_arguments(parser)
    return parser


def subcommand_parser(parser: argparse.ArgumentParser, path: str) -> argparse.ArgumentParser | None:
    """The parser of ``path`` ("data encode"), or None when no such command is registered."""
    for word in path.split():
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions or word not in actions[0].choices:
            return None
        parser = actions[0].choices[word]
    return parser


def _add_threads_arguments(parser: argparse.ArgumentParser) -> None:
    from .settings import add_threads_argument

    for path in HEAVY_COMMANDS:
        command = subcommand_parser(parser, path)
        if command is not None and not any("--threads" in a.option_strings for a in command._actions):
            add_threads_argument(command)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        if hasattr(args, "threads"):  # heavy commands: --threads / MUPD_THREADS / idle cores, before torch loads
            from .settings import apply_threads

            apply_threads(args.threads, import_torch=False)  # args.threads stays None when automatic
        return int(args.func(args) or 0)
    except MupdError as exc:
        print(f"mupd: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mupd: interrupted. train, align train, vae train, data tile/encode, generate --batch and augment "
              "keep their progress and resume when the same command is re-run", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
