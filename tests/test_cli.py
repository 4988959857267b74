"""The ``mupd`` command root: info, help without heavy imports, one-line errors."""

from __future__ import annotations

import subprocess
import sys

from mupd import __version__
from mupd.cli import main


def test_info_lists_versions_and_encoder_licences(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"mupd {__version__}" in out and "torch " in out
    uni = next(line for line in out.splitlines() if "image/uni " in line)
    assert "CC-BY-NC-ND-4.0" in uni and "NON-COMMERCIAL" in uni
    assert "commercial ok" in next(line for line in out.splitlines() if "text/hashed-words" in line)


def test_no_command_prints_help_and_user_errors_are_one_line(capsys, tmp_path):
    assert main([]) == 1
    assert "COMMAND" in capsys.readouterr().out
    assert main(["generate", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mupd: error:") and "missing" in err[0]


def test_help_does_not_import_torch():
    code = "import sys, mupd.cli; mupd.cli.build_parser(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
