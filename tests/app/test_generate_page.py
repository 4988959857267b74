"""The Generate and Compare screens in a real headless Chromium against a real server."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
TIMEOUT = 60


@pytest.fixture(scope="module")
def site(text_rna_image_dir, browser, start_server):
    context, app = start_server(text_rna_image_dir)
    with context as url:
        browser.get(url)
        wait_for(browser, lambda d: "device cpu" in d.find_element("id", "status").text)
        yield browser, url


def wait_for(driver, condition, timeout=TIMEOUT):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)


def fresh(driver, url):
    driver.get(url)
    wait_for(driver, lambda d: "device cpu" in d.find_element("id", "status").text)


def fill(driver, name, value):
    field = driver.find_element("css selector", f"#generate-form [name={name}]")
    field.clear()
    field.send_keys(str(value))


def loaded_images(driver, css):
    """Result images that the browser has decoded, with their natural sizes."""
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].filter(i => i.complete && i.naturalWidth > 0)"
        ".map(i => [i.naturalWidth, i.naturalHeight, i.src])", css)


def error_text(driver):
    box = driver.find_element("id", "error")
    return box.text if box.is_displayed() else ""


def test_status_line_names_model_device_and_licences(site, tmp_path):
    driver, _ = site
    status = driver.find_element("id", "status").text
    assert "model serve-generate" in status or "checkpoint" in status
    assert "device cpu" in status and "text, image, rna" in status
    # hashed-words is Apache-2.0; a timm ViT's licence is its card's: the strictest answer is shown plainly
    assert driver.find_element("id", "licence").text == "commercial use: check the licences"
    detail = driver.find_element("id", "licence-detail").text
    assert "text: hashed-words (Apache-2.0" in detail and "image: timm" in detail
    # only the streams this model has get sliders
    names = {e.get_attribute("name") for e in driver.find_elements("css selector", "#sliders input")}
    assert names == {f"{k}_{m}" for k in ("guidance", "scale") for m in ("text", "rna", "image")}
    driver.save_screenshot(str(tmp_path / "status.png"))


def test_generate_from_text_shows_images_with_parameters(site, tmp_path, image_size, get_local):
    driver, url = site
    fresh(driver, url)
    fill(driver, "text", "lymph node with metastatic tumour")
    fill(driver, "n", 2)
    fill(driver, "steps", 2)
    fill(driver, "seed", 7)
    driver.find_element("id", "generate-button").click()
    images = wait_for(driver, lambda d: len(loaded_images(d, "#generate-results .card img")) == 2
                      and loaded_images(d, "#generate-results .card img"))
    assert all((w, h) == (image_size, image_size) for w, h, _ in images)
    params = [e.text for e in driver.find_elements("css selector", "#generate-results .card pre")]
    assert 'mupd:seed: 7' in params[0] and 'mupd:seed: 8' in params[1]
    assert '"text":"lymph node with metastatic tumour"' in params[0] and "mupd:steps: 2" in params[0]
    driver.save_screenshot(str(tmp_path / "generate-text.png"))
    # the download link serves the PNG with its mupd:* metadata kept
    href = driver.find_element("css selector", "#generate-results .card a[download]").get_attribute("href")
    png = Image.open(io.BytesIO(get_local(href)))
    assert png.text["mupd:seed"] == "7"
    assert "metastatic" in png.text["mupd:conditions"]
    assert not error_text(driver)
    zip_href = driver.find_element("id", "generate-zip").get_attribute("href")
    archive = zipfile.ZipFile(io.BytesIO(get_local(zip_href)))
    assert sorted(archive.namelist())[-1] == "parameters.json" and len(archive.namelist()) == 3
    assert Image.open(archive.open(archive.namelist()[0])).text["mupd:seed"] == "7"


def test_vary_a_reference_with_sdedit(site, tmp_path, sample_data, image_size):
    driver, url = site
    fresh(driver, url)
    driver.find_element("css selector", "nav button[data-tab=image]").click()
    methods = [o.get_attribute("value") for o in driver.find_elements("css selector", "select[name=method] option")]
    assert methods == ["vary:sdedit", "translate:sdedit"]
    patch = sorted((sample_data / "pcam" / "valid" / "1").glob("*.jpg"))[0]  # a real 96 px PCam patch
    driver.find_element("css selector", "#image-form [name=image]").send_keys(str(patch))
    steps = driver.find_element("css selector", "#image-form [name=steps]")
    steps.clear()
    steps.send_keys("4")
    driver.find_element("id", "image-button").click()
    wait_for(driver, lambda d: d.find_element("id", "image-progress-text").text.startswith("done") or error_text(d))
    assert not error_text(driver)
    size = driver.execute_script("const i = document.getElementById('result-view'); return [i.naturalWidth, i.naturalHeight]")
    assert size == [image_size, image_size]
    assert "resized to the model's 32x32 px" in driver.find_element("id", "notes").text
    params = driver.find_element("id", "image-params").text
    assert 'mupd:task: "vary"' in params and "mupd:strength: 0.6" in params
    driver.save_screenshot(str(tmp_path / "vary.png"))


def _h5ad(sample_data, path, rows=3):
    """Three real TCGA-PAAD profiles as AnnData (obs = slide ids, var = gene symbols)."""
    import anndata
    import pandas as pd

    table = pd.read_csv(sample_data / "tcga" / "tcga_paad_all_clean.csv.gz", nrows=rows, low_memory=False)
    cols = [c for c in table.columns if c.endswith("_rnaseq")][:60]
    adata = anndata.AnnData(table[cols].to_numpy(np.float32),
                            obs=pd.DataFrame(index=table["slide_id"].astype(str).tolist()),
                            var=pd.DataFrame(index=[c[:-7] for c in cols]))
    adata.write_h5ad(path)
    return adata.obs_names[1]


def test_generate_from_rna_picks_a_row(site, tmp_path, sample_data):
    from selenium.webdriver.support.ui import Select

    driver, url = site
    fresh(driver, url)
    row = _h5ad(sample_data, tmp_path / "spots.h5ad")
    driver.find_element("css selector", "#generate-form [name=rna]").send_keys(str(tmp_path / "spots.h5ad"))
    wait_for(driver, lambda d: len(Select(d.find_element("name", "rna_row")).options) == 3)
    Select(driver.find_element("name", "rna_row")).select_by_value(row)
    fill(driver, "n", 1)
    fill(driver, "steps", 2)
    driver.find_element("id", "generate-button").click()
    wait_for(driver, lambda d: len(loaded_images(d, "#generate-results .card img")) == 1)
    params = driver.find_element("css selector", "#generate-results .card pre").text
    assert f'"source":"spots.h5ad:{row}"' in params.replace(" ", "")
    assert "24/24 vocabulary genes matched" in driver.find_element("id", "notes").text
    driver.save_screenshot(str(tmp_path / "generate-rna.png"))


def _submit_expecting_error(driver, url, **uploads):
    fresh(driver, url)
    fill(driver, "steps", 1)
    for name, path in uploads.items():
        driver.find_element("css selector", f"#generate-form [name={name}]").send_keys(str(path))
    driver.find_element("id", "generate-button").click()
    return wait_for(driver, error_text)


def test_bad_uploads_show_an_error_and_the_server_keeps_serving(site, tmp_path):
    driver, url = site
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 20)
    assert "not a readable image" in _submit_expecting_error(driver, url, ref=corrupt)
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((32, 32), 128, np.uint8), "L").save(grey)
    message = _submit_expecting_error(driver, url, ref=grey)
    assert "1 channel" in message and "RGB" in message
    unknown = tmp_path / "genes.tsv"
    unknown.write_text("gene\tvalue\nNOTAGENE1\t1.0\nNOTAGENE2\t2.5\n")
    message = _submit_expecting_error(driver, url, rna=unknown)
    assert "none of its 2 genes" in message and "genes.tsv" in message and str(tmp_path) not in message
    driver.save_screenshot(str(tmp_path / "error.png"))
    # the server still serves: a good request right after works
    fresh(driver, url)
    fill(driver, "genes", "AAK1=5.0, AATK=2, NOTAGENE=1")  # two of the model's genes, typed
    fill(driver, "n", 1)
    fill(driver, "steps", 1)
    driver.find_element("id", "generate-button").click()
    wait_for(driver, lambda d: len(loaded_images(d, "#generate-results .card img")) == 1 or error_text(d))
    assert not error_text(driver)
    assert "2/24 vocabulary genes matched" in driver.find_element("id", "notes").text


def test_compare_two_parameter_sets_with_the_same_seed(site, tmp_path):
    driver, url = site
    fresh(driver, url)
    fill(driver, "text", "lymph node tissue without tumour")
    driver.find_element("css selector", "nav button[data-tab=compare]").click()
    b_steps = driver.find_element("css selector", "fieldset[data-side=b] [name=steps]")
    b_steps.clear()
    b_steps.send_keys("3")
    for side in ("a", "b"):
        driver.execute_script("const s = document.querySelector(`fieldset[data-side=${arguments[0]}] [name=steps]`);"
                              "if (arguments[0] === 'a') s.value = 1;", side)
    seed = driver.find_element("css selector", "#compare-form [name=seed]")
    seed.clear()
    seed.send_keys("11")
    driver.find_element("id", "compare-button").click()
    wait_for(driver, lambda d: len(loaded_images(d, "#tab-compare .card img")) == 2)
    a, b = (driver.find_element("css selector", f"#compare-{s} pre").text for s in ("a", "b"))
    assert "mupd:seed: 11" in a and "mupd:seed: 11" in b
    assert "mupd:steps: 1" in a and "mupd:steps: 3" in b
    driver.save_screenshot(str(tmp_path / "compare.png"))
