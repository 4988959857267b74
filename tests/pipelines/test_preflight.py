"""Every pipelines command checks its inputs before it loads a model, and images of another size are
resized to the model's by a stated rule.

The model folders here have damaged weights: a command that reached the loading step would fail with
a different error, so each expected message proves the check ran first."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pandas as pd
import pytest
from PIL import Image

from mupd.cli import main
from mupd.pipelines.pngmeta import read_params


def damaged_copy(folder, target):
    shutil.copytree(folder, target)
    (target / "model" / "model.safetensors").write_bytes(b"not a safetensors file")
    return target


@pytest.fixture(scope="module")
def broken(generate_dir, stain_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("broken")
    return damaged_copy(generate_dir, root / "generate"), damaged_copy(stain_dir, root / "stain")


@pytest.fixture(scope="module")
def files(sample_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    pcam = sorted((sample_data / "pcam/valid/1").iterdir())[0]
    Image.open(pcam).convert("L").save(root / "grey.png")
    table = sample_data / "tcga/tcga_paad_all_clean.csv.gz"
    (root / "bad.jsonl").write_text('{"text": "x"}\n{"rna": "%s:NO_SUCH_SLIDE"}\n' % table)
    return {"pcam": pcam, "grey": root / "grey.png", "table": table, "batch": root / "bad.jsonl",
            "mouse": sample_data / "visium/squidpy/test_data.h5ad", "her2st": sample_data / "her2st/ST-cnts/C5.tsv.gz",
            "slide": pd.read_csv(table, nrows=1, low_memory=False)["slide_id"][0]}


def cases(gen, stain, f, out):
    """(command line, expected message) pairs; every one is bad input."""
    missing = str(out / "missing.png")
    o = ["--out", str(out / "o")]
    g = ["generate", "--model", str(gen), *o]
    return [
        (["generate", "--model", str(out / "nope"), "--text", "x", *o], "does not exist"),
        (g + ["--rna", f"{out}/none.csv:X"], "RNA file"),
        (g + ["--rna", f"{f['table']}:NO_SUCH_SLIDE"], "has no row with slide_id"),
        (g + ["--rna", f"{f['mouse']}:AAATTGCGGCGGTTCT-1"], "none of its 1999 genes"),
        (g + ["--rna", f"{f['her2st']}:NOPE"], "has no row 'NOPE'; first ids: ['10x11'"),
        (g + ["--label", "7"], "not one of the model's labels"),
        (g + ["--ref", missing], "missing.png does not exist"),
        (g + ["--ref", str(f["grey"])], "has mode L"),
        (g + ["--batch", str(out / "none.jsonl")], "batch file"),
        (g + ["--batch", str(f["batch"])], "bad.jsonl row 2: "),
        (g + ["--text", "x", "--guidance", "cells=2"], "no cells stream"),
        (g + ["--text", "x", "--scale", "rna=1.5"], "no rna condition is given"),
        (g + ["--text", "x", "--steps", "0"], "--steps must be"),
        (["generate", "--model", str(stain), "--text", "x", *o], "needs a source image"),
        (["vary", "--model", str(stain), "--image", missing, *o], "missing.png does not exist"),
        (["vary", "--model", str(stain), "--image", str(f["pcam"]), *o], "--strength 1 would ignore the image"),
        (["vary", "--model", str(gen), "--image", str(f["pcam"]), "--strength", "0.03", "--sampler", "euler_maruyama",
          *o], "too small for the euler_maruyama sampler"),
        (["vary", "--model", str(gen), "--image", str(f["pcam"]), "--strength", "1.5", *o], "strength must be in"),
        (["stain", "--model", str(stain), "--image", missing, *o], "missing.png does not exist"),
        (["stain", "--model", str(gen), "--image", str(f["pcam"]), *o], "without source-image input channels"),
        (["stain", "--model", str(stain), "--image", str(f["pcam"]), "--text", "Ki67", "--guidance", "2", *o],
         "guidance would not be applied"),
        (["stain", "--model", str(stain), "--image", str(f["pcam"]), "--tile", "64", *o], "--tile must equal"),
        (["translate", "--model", str(gen), "--image", str(f["pcam"]), "--method", "readout", *o],
         "only --method sdedit"),
        (["translate", "--model", str(gen), "--image", str(f["grey"]), *o], "has mode L"),
        (["augment", "--model", str(gen), "--data", str(out / "nope"), "--per-class", "2", *o], "is not a folder"),
        (["generate", "--model", str(gen), "--text", "x", "--out", str(f["grey"])], "is a file; pass a folder"),
    ]


def test_every_command_checks_inputs_before_loading_the_model(broken, files, tmp_path, capsys):
    for argv, message in cases(*broken, files, tmp_path):
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 2 and message in err, (argv, err)
        assert err.startswith("mupd: error:") and err.count("\n") == 1, err


def test_an_input_error_never_imports_torch(broken, files, tmp_path):
    """The checks run on JSON and pixels only, so an error costs no torch import (about 1 s)."""
    gen, stain = broken
    code = ("import sys; from mupd.cli import main; rc = main(sys.argv[1:]); "
            "print(rc, 'torch' in sys.modules, file=sys.stderr)")
    for argv in (["vary", "--model", str(stain), "--image", str(tmp_path / "missing.png"), "--out", str(tmp_path)],
                 ["generate", "--model", str(gen), "--rna", f"{files['mouse']}:AAATTGCGGCGGTTCT-1", "--out",
                  str(tmp_path)]):
        run = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
        assert run.stderr.strip().endswith("2 False"), run.stderr


def test_vary_resizes_a_larger_patch_to_the_model_and_says_so(generate_dir, files, tmp_path, capsys):
    out = tmp_path / "vary"
    assert main(["vary", "--model", str(generate_dir), "--image", str(files["pcam"]), "--strength", "0.5",
                 "--n", "1", "--steps", "2", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "is 96x96 px; resized to the model's 32x32 px" in err
    image = read_params(out / "vary-00000.png")["mupd:conditions"]["image"]
    assert image["resized_from"] == [96, 96] and image["source"] == str(files["pcam"])


def test_the_quick_rna_check_agrees_with_the_full_reader(files):
    """The pre-flight reads only names; the genes and rows it finds are those read_rna finds."""
    from mupd.pipelines.inputs import read_rna
    from mupd.pipelines.preflight import rna_names

    for spec in (f"{files['mouse']}:AACGCGAACGGCAACA-1", f"{files['table']}:{files['slide']}", f"{files['her2st']}:10x12"):
        quick, full = rna_names(spec), read_rna(spec)
        assert quick.genes == full.genes and quick.source == full.source, spec
