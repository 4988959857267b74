"""The server's edges without a browser: upload checks, the one-at-a-time queue, the CLI."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from mupd.app.jobs import JobQueue
from mupd.app.uploads import Limits, parse_gene_values, read_image, read_rna_upload, rna_rows, safe_name
from mupd.errors import MupdError


def png(array: np.ndarray, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def test_images_are_checked_before_decoding():
    limits = Limits(max_pixels=64 * 64)
    ok = read_image(png(np.zeros((64, 48, 3), np.uint8), "RGB"), "ok.png", limits)
    assert ok.size == (48, 64) and ok.mode == "RGB"
    with pytest.raises(MupdError, match="65x64 px; images are limited to 4,096 pixels"):
        read_image(png(np.zeros((64, 65, 3), np.uint8), "RGB"), "big.png", limits)
    with pytest.raises(MupdError, match="has 1 channel .*RGB"):
        read_image(png(np.zeros((8, 8), np.uint8), "L"), "grey.png", limits)
    with pytest.raises(MupdError, match="'x.png' is not a readable image"):
        read_image(b"garbage", "x.png", limits)
    with pytest.raises(MupdError, match="limited to 0.001 MB"):
        noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)  # ~12 kB as PNG
        read_image(png(noise, "RGB"), "noise.png", Limits(max_upload_mb=0.001))


def test_rna_uploads_name_the_upload_not_a_server_path(sample_data):
    import pandas as pd

    table = pd.read_csv(sample_data / "tcga" / "tcga_paad_all_clean.csv.gz", nrows=3, low_memory=False)
    cols = ["slide_id"] + [c for c in table.columns if c.endswith("_rnaseq")][:10]
    data = table[cols].to_csv(index=False).encode()
    limits = Limits()
    rows = rna_rows(data, "paad.csv", limits)
    assert rows == table["slide_id"].astype(str).tolist()
    profile = read_rna_upload(data, "paad.csv", rows[2], limits)
    assert profile.source == f"paad.csv:{rows[2]}" and len(profile.genes) == 10
    assert np.allclose(profile.values, table.loc[2, cols[1:]].to_numpy(np.float32))
    with pytest.raises(MupdError, match="'paad.csv' has no row") as err:
        read_rna_upload(data, "paad.csv", "nope", limits)
    assert "/tmp" not in str(err.value) and "upload.csv" not in str(err.value)
    with pytest.raises(MupdError, match="must be .h5ad"):
        read_rna_upload(data, "paad.exe", None, limits)


def test_gene_values_and_file_names():
    profile = parse_gene_values("ERBB2=8.1, ESR1: 2\nKRT5 -1e-1")
    assert profile.genes == ["ERBB2", "ESR1", "KRT5"] and np.allclose(profile.values, [8.1, 2, -0.1])
    with pytest.raises(MupdError, match="not understood"):
        parse_gene_values("ERBB2 is high")
    assert safe_name("../../etc/passwd") == "passwd" and safe_name("C:\\x\\a b$.h5ad") == "a b_.h5ad"


def test_one_job_at_a_time_in_order_and_errors_do_not_stop_the_worker():
    jobs, running, peak, order = JobQueue(max_queued=3), [0], [0], []
    gate = threading.Event()

    def work(tag):
        def run(job):
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            gate.wait(5)
            order.append(tag)
            running[0] -= 1
            if tag == "bad":
                raise MupdError("bad input")
            return {"images": [], "notes": [tag]}
        return run

    submitted = [jobs.submit("t", work(tag)) for tag in ("a", "bad", "c")]
    time.sleep(0.1)
    assert [jobs.position(j) for j in submitted] == [0, 1, 2]  # a runs; the others wait in order
    jobs.submit("t", work("d"))
    with pytest.raises(MupdError, match="queue is full"):
        for _ in range(3):
            jobs.submit("t", work("x"))
    gate.set()
    deadline = time.time() + 5
    while any(j.state in ("queued", "running") for j in submitted) and time.time() < deadline:
        time.sleep(0.01)
    assert order[:3] == ["a", "bad", "c"] and peak[0] == 1
    assert [j.state for j in submitted] == ["done", "error", "done"] and submitted[1].error == "bad input"
    jobs.close()


def test_cli_checks_before_loading(tmp_path, capsys):
    from mupd.cli import main

    assert main(["serve", "--model", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["serve", "--model", str(tmp_path), "--port", "70000"]) == 2
    assert "--port must be in 1..65535" in capsys.readouterr().err


def test_status_flags_non_commercial_plainly(rgb_stain_dir):
    from mupd.app.server import status
    from mupd.pipelines import Pipeline

    pipe = Pipeline.from_pretrained(rgb_stain_dir, device="cpu")
    facts = status(pipe, Limits())
    assert facts["licence"]["commercial"] == "yes"  # hashed-words: Apache-2.0 mupd code
    assert facts["licence"]["encoders"]["text"]["name"] == "hashed-words"
    assert facts["methods"] == ["stain:readout", "stain:sample"] and facts["streams"]["rna"] is False
    pipe.index["licence"] = {"commercial": "no"}  # e.g. a folder with a CC-BY-NC encoder
    assert status(pipe, Limits())["licence"]["commercial"] == "no"
    pipe.index.pop("licence")
    pipe.index["encoders"]["text"]["licence"]["commercial"] = False  # older folders stored booleans
    assert status(pipe, Limits())["licence"]["commercial"] == "no"


def test_form_numbers_are_checked_with_the_field_named():
    from mupd.app.tasks import per_modality, sampling_options

    limits = Limits()
    assert sampling_options({"steps": "12", "seed": ""}, limits) == {"sampler": "heun", "steps": 12, "seed": 0}
    with pytest.raises(MupdError, match="steps must be a whole number, got '1.5'"):
        sampling_options({"steps": "1.5"}, limits)
    with pytest.raises(MupdError, match="seed must be between 0 and"):
        sampling_options({"seed": "-3"}, limits)
    assert per_modality({"guidance_text": "2.5", "guidance_rna": ""}, "guidance", {"text", "rna"}, 1.0, 10.0) == {"text": 2.5}
    with pytest.raises(MupdError, match="guidance_text must be a number, got 'x'"):
        per_modality({"guidance_text": "x"}, "guidance", {"text"}, 1.0, 10.0)
    with pytest.raises(MupdError, match="guidance_text must be between 0 and 10"):
        per_modality({"guidance_text": "11"}, "guidance", {"text"}, 1.0, 10.0)
