"""The Stain / translate / vary screen in a real headless Chromium: a region larger than the model's
tile is stained tile by tile (the CLI's seamless tiling), with progress; limits give clear errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
TIMEOUT = 60
MAX_SIDE = 160  # this server's image limit: MAX_SIDE x MAX_SIDE pixels


@pytest.fixture(scope="module")
def site(rgb_stain_dir, browser, start_server):
    context, app = start_server(rgb_stain_dir, max_pixels=MAX_SIDE * MAX_SIDE, max_upload_mb=0.2)
    with context as url:
        yield browser, url


def wait_for(driver, condition, timeout=TIMEOUT):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)


def open_tab(driver, url):
    driver.get(url)
    wait_for(driver, lambda d: "device cpu" in d.find_element("id", "status").text)
    driver.find_element("css selector", "nav button[data-tab=image]").click()


def error_text(driver):
    box = driver.find_element("id", "error")
    return box.text if box.is_displayed() else ""


@pytest.fixture(scope="module")
def region(sample_data, tmp_path_factory):
    """A 96x88 px crop of a real DeepLIIF IHC panel (larger than the 32 px tile: 4x4 tiles)."""
    panel = sample_data / "stains" / "deepliif" / "Sample_Dataset" / "test" / "22_2.png"
    path = tmp_path_factory.mktemp("region") / "ihc-region.png"
    with Image.open(panel) as im:
        im.convert("RGB").crop((200, 200, 296, 288)).save(path)
    return path


def test_stain_a_region_tiled_with_progress_and_blend(site, region, tmp_path, get_local):
    driver, url = site
    open_tab(driver, url)
    methods = [o.get_attribute("value") for o in driver.find_elements("css selector", "select[name=method] option")]
    assert methods == ["stain:readout", "stain:sample"]
    driver.find_element("css selector", "#image-form [name=image]").send_keys(str(region))
    driver.find_element("id", "image-button").click()
    wait_for(driver, lambda d: d.find_element("id", "image-progress-text").text.startswith("done") or error_text(d))
    assert not error_text(driver)
    assert "(16 tiles)" in driver.find_element("id", "image-progress-text").text
    assert driver.execute_script("const p = document.getElementById('image-progress'); return [p.value, p.max]") == [16, 16]
    size = driver.execute_script("const i = document.getElementById('result-view'); return [i.naturalWidth, i.naturalHeight]")
    assert size == [96, 88]  # the whole region comes back, not one tile
    params = driver.find_element("id", "image-params").text
    assert 'mupd:task: "stain"' in params and "mupd:seed: 0" in params
    slider = driver.find_element("id", "blend")
    driver.execute_script("arguments[0].value = 80; arguments[0].dispatchEvent(new Event('input'))", slider)
    assert driver.find_element("id", "blend-result").value_of_css_property("opacity") == "0.8"
    driver.save_screenshot(str(tmp_path / "stain.png"))
    href = driver.find_element("id", "result-download").get_attribute("href")
    png = Image.open(io.BytesIO(get_local(href)))
    assert png.size == (96, 88) and '"stain"' in png.text["mupd:task"]


def test_limits_and_wrong_model_give_clear_errors(site, tmp_path):
    driver, url = site
    too_big = tmp_path / "big.png"
    Image.fromarray(np.zeros((MAX_SIDE + 40, MAX_SIDE + 40, 3), np.uint8)).save(too_big)
    open_tab(driver, url)
    driver.find_element("css selector", "#image-form [name=image]").send_keys(str(too_big))
    driver.find_element("id", "image-button").click()
    assert "images are limited to 25,600 pixels" in wait_for(driver, error_text)
    heavy = tmp_path / "noise.png"  # incompressible pixels: over the 0.2 MB upload limit
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)).save(heavy)
    assert heavy.stat().st_size > 0.2 * 2**20
    open_tab(driver, url)
    driver.find_element("css selector", "#image-form [name=image]").send_keys(str(heavy))
    driver.find_element("id", "image-button").click()
    message = wait_for(driver, error_text)
    assert "uploads are limited to 0.2 MB" in message
    driver.save_screenshot(str(tmp_path / "limits.png"))
    # a stain model cannot generate from text: the Generate button is off and says why; only its
    # streams are offered
    driver.find_element("css selector", "nav button[data-tab=generate]").click()
    assert driver.find_element("id", "f-text").is_displayed()
    assert not driver.find_element("id", "f-rna").is_displayed() and not driver.find_element("id", "f-image").is_displayed()
    assert not driver.find_element("id", "generate-button").is_enabled()
    notice = driver.find_element("id", "generate-results").get_attribute("textContent")
    assert notice == "this is a stain model: use the Stain / translate tab"
