"""The ``mupd`` command root: info, help without heavy imports, one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mupd import __version__
from mupd.errors import MupdError
from mupd.cli import main


def test_info_lists_versions_and_encoder_licences(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"mupd {__version__}" in out and "torch " in out
    line = {row.split()[0]: row.split(None, 2)[1:] for row in out.splitlines() if row.startswith("  ") and "/" in row.split()[0]}
    assert line["image/uni"][0] == "no" and line["image/uni"][1].startswith("CC-BY-NC-ND-4.0")
    assert line["text/hashed-words"][0] == "yes"
    # one statement per entry: no "MIT ... NON-COMMERCIAL" or "... commercial ok" beside GPL gene sets
    assert line["image/plip"][0] == "check" and line["rna/pathway-tokens"][0] == "check"
    assert "GPL-3.0" in line["rna/pathway-tokens"][1] and "unverified" not in out


def test_every_heavy_command_takes_threads():
    from mupd.cli import HEAVY_COMMANDS, build_parser, subcommand_parser

    parser = build_parser()
    for path in HEAVY_COMMANDS:
        command = subcommand_parser(parser, path)
        assert command is not None, path
        assert any("--threads" in a.option_strings for a in command._actions), path


def test_threads_setting_env_and_flag(monkeypatch, capsys, tmp_path):
    import torch

    from mupd.settings import apply_threads, resolve_threads, settings

    assert resolve_threads(3) == 3
    monkeypatch.setattr(settings, "threads", 2)
    assert apply_threads() == 2 and torch.get_num_threads() == 2
    monkeypatch.setattr(settings, "threads", "many")  # as read from MUPD_THREADS=many
    with pytest.raises(MupdError, match="MUPD_THREADS"):
        resolve_threads()
    monkeypatch.setattr(settings, "threads", None)
    assert main(["evaluate", "--real", str(tmp_path), "--fake", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--threads", "0"]) == 2
    assert "--threads must be a positive integer" in capsys.readouterr().err


def test_default_threads_leave_out_a_core_another_process_keeps_busy():
    from mupd.settings import available_cores, default_threads

    cores = available_cores()
    if cores < 2:
        pytest.skip("needs at least two usable cores")
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time

        time.sleep(0.3)
        assert default_threads() <= cores - 1  # torch's own default would be every core
    finally:
        spinner.kill()
        spinner.wait()


def test_automatic_threads_follow_other_work_during_a_run_and_fixed_ones_do_not(monkeypatch):
    """ThreadRetuner: a job that starts takes a thread away, and it comes back when the job ends,
    while this process's own busy thread is not counted as other work."""
    import time

    import torch

    from mupd.settings import ThreadRetuner, apply_threads, available_cores, default_threads, settings

    cores = available_cores()
    if cores < 2 or default_threads() < cores:
        pytest.skip("needs at least two usable cores that no other job keeps busy")
    monkeypatch.setattr(settings, "threads", None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    apply_threads()  # automatic
    torch.set_num_threads(cores)
    retune = ThreadRetuner(every=0.0)
    assert retune() is None  # the first call only takes a snapshot
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)
        retune()
        with_job = torch.get_num_threads()
        assert with_job <= cores - 1
    finally:
        spinner.kill()
        spinner.wait()
    end = time.process_time() + 1.0
    while time.process_time() < end:  # this process keeps one core busy itself: not other work
        pass
    retune()
    assert torch.get_num_threads() > with_job
    apply_threads(1)  # fixed: never changed
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        retune()
        time.sleep(1.0)
        assert retune() is None and torch.get_num_threads() == 1
    finally:
        spinner.kill()
        spinner.wait()


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


def test_train_names_a_missing_autoencoder_folder_before_loading_anything(sample_data, tmp_path):
    code = ("import sys; from mupd.cli import main; rc = main(['train', '--preset', 'tiny', '--set', "
            "'data.path=' + sys.argv[1], '--set', 'vae.path=' + sys.argv[2]]); print(rc, 'torch' in sys.modules)")
    missing = tmp_path / "runs" / "vae"
    out = subprocess.run([sys.executable, "-c", code, str(sample_data / "pcam" / "train"), str(missing)],
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["2", "False"], out.stderr
    assert f"vae.path: {missing} does not exist" in out.stderr


def test_an_exported_omp_num_threads_is_respected_when_nothing_else_is_set(monkeypatch):
    from mupd.settings import resolve_threads, settings

    monkeypatch.setattr(settings, "threads", None)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert resolve_threads() == 3
    monkeypatch.setattr(settings, "threads", 2)  # MUPD_THREADS / settings win
    assert resolve_threads() == 2 and resolve_threads(5) == 5
