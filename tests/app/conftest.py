"""A real server (uvicorn on a free localhost port) over tiny real pipeline folders, and a real
headless Chromium (Debian's chromium + chromium-driver, driven by Selenium; nothing downloads).

Without the browser these tests skip locally, but FAIL under CI (CI=true): .ci/run installs it."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest
import torch

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMEDRIVER = "/usr/bin/chromedriver"


def _pipeline_helpers():
    """The tiny-folder builders of tests/pipelines/conftest.py (one definition of the tiny models)."""
    spec = importlib.util.spec_from_file_location("_pipelines_conftest", Path(__file__).parents[1] / "pipelines" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


helpers = _pipeline_helpers()
IMAGE_SIZE = helpers.IMAGE_SIZE


def _missing(reason: str):
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason}; CI must install it (.ci/run: apt-get install -y chromium chromium-driver)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium is not installed (pip install -e '.[test]')")
    binary = next((b for b in CHROMIUM if Path(b).exists()), None) or shutil.which("chromium")
    if binary is None or not Path(CHROMEDRIVER).exists():
        _missing("headless Chromium (Debian packages chromium, chromium-driver) is not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1250", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="session")
def text_rna_image_dir(tmp_path_factory, sample_data):
    """A generator with text, RNA (TCGA gene vocabulary) and reference-image streams, and PCam labels."""
    from mupd import MuPD
    from mupd.bundle import save_bundle

    root = tmp_path_factory.mktemp("serve-generate")
    torch.manual_seed(0)
    vocab, _ = helpers.tcga_vocabulary(sample_data)
    model = MuPD.from_preset("tiny", modalities=("text", "image"), cond_dims={"text": 32, "image": 32},
                             vector_modalities={"rna": helpers.GENES}, input_size=8)
    helpers._randomise_gates(model)
    encoder_dir = helpers.tiny_image_encoder_folder(root / "vit")
    labels = {"0": "lymph node tissue without tumour", "1": "lymph node with metastatic tumour"}
    save_bundle(root / "checkpoint", model=model, vae=helpers.tiny_vae(), vocabulary=vocab,
                encoders={"text": ("hashed-words", {"width": 32}, None), "image": ("timm", {}, encoder_dir)},
                extra={"labels": labels, "task": "generate", "image_size": IMAGE_SIZE})
    return root / "checkpoint"


@pytest.fixture(scope="session")
def rgb_stain_dir(tmp_path_factory):
    """An H&E -> IHC (RGB -> RGB) stain fine-tune: source latents as 4 extra input channels."""
    from mupd import MuPD
    from mupd.bundle import save_bundle

    root = tmp_path_factory.mktemp("serve-stain")
    torch.manual_seed(1)
    model = MuPD.from_preset("tiny", modalities=("text",), cond_dims={"text": 32}, input_size=8, extra_in_channels=4)
    helpers._randomise_gates(model)
    save_bundle(root / "he-to-ihc", model=model, vae=helpers.tiny_vae(seed=2), source_vae=helpers.tiny_vae(seed=3),
                encoders={"text": ("hashed-words", {"width": 32}, None)},
                extra={"task": "stain", "image_size": IMAGE_SIZE, "source_channels": 4})
    return root / "he-to-ihc"


@pytest.fixture(scope="session")
def image_size():
    return IMAGE_SIZE


@pytest.fixture(scope="session")
def start_server():
    return _start_server


def _start_server(folder, **limits):
    """(context manager yielding the base URL, app) for a pipeline folder."""
    from mupd.app.server import create_app, serving
    from mupd.app.uploads import Limits
    from mupd.pipelines import Pipeline

    app = create_app(Pipeline.from_pretrained(folder, device="cpu"), Limits(**limits))
    return serving(app), app


@pytest.fixture(scope="session")
def get_local():
    """GET a URL of the test's own server (loopback only; the tests never leave this machine)."""
    return _get_local


def _get_local(url: str) -> bytes:
    """GET a URL of the test's own server (loopback only; the tests never leave this machine)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1", f"tests only talk to their own localhost server, not {url}"
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
        response = connection.getresponse()
        assert response.status == 200, f"GET {url}: HTTP {response.status}"
        return response.read()
    finally:
        connection.close()
