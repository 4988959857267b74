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
)

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

    print("registered encoders (licence, commercial use):")
    for entry in enc.all_entries():
        flag = "commercial ok" if entry.commercial else "NON-COMMERCIAL"
        print(f"  {entry.name:<24} {entry.licence:<20} {flag}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mupd", description="Multimodal generative pathology (MuPD).")
    parser.add_argument("--version", action="version", version=f"mupd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser("info", help="version, torch/CUDA, optional adapters and their licences")
    info.set_defaults(func=_info)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
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
