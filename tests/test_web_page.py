"""The web page (serving/web) in a real headless Chromium driven by Selenium, against real
``fer-serve`` servers on 127.0.0.1: a photo of six people through the file input, checked
against a direct REST call; the webcam, fed by Chromium's fake capture device with a clip
made of a real photo; explanations; the error states; ``fer-pipeline web`` in front of a
separate server. One browser for the module (Debian's chromium and chromium-driver).

``python -m tests.test_web_page docs/web-page.png`` writes the README's screenshot.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests

from serving.client import RestClient
from serving.contract import BUNDLED_MODEL_BASE, CLASS_NAMES, PROBABILITIES
from serving.faces import face_crop, get_detector
from serving.web.app import NO_EXPLAIN
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = Path(__file__).parent / "data" / "photos"
GROUP = PHOTOS / "insightface_t1.jpg"  # six faces (see SOURCES.md)
PORTRAIT = PHOTOS / "face_recognition_obama.jpg"  # one face
CHROME_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream")
#: The page's states (``document.body.dataset.state``) in which an analysis has ended.
ENDED = ("done", "error", "no-face")


# --- the browser and the servers ------------------------------------------------------------


def chrome(clip: Path | None = None, downloads: Path | None = None, width: int = 1280,
           height: int = 1000):
    """Headless Chromium through Debian's chromedriver; the fake camera plays ``clip``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        pytest.fail("chromium and chromedriver are needed: apt-get install -y chromium "
                    "chromium-driver (.ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    if clip is not None:
        options.add_argument(f"--use-file-for-fake-video-capture={clip}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    session = webdriver.Chrome(options=options, service=Service(driver))
    if downloads is not None:
        session.execute_cdp_cmd("Browser.setDownloadBehavior",
                                {"behavior": "allow", "downloadPath": str(downloads)})
    return session


def write_clip(path: Path, frames: int = 12) -> Path:
    """A 640x480 YUV4MPEG2 clip of a real photo (a press photo of one person), drifting a
    few pixels a frame: what Chromium's fake camera plays, in a loop."""
    photo = cv2.imread(str(PORTRAIT))[0:384, 0:512]
    with path.open("wb") as out:
        out.write(b"YUV4MPEG2 W640 H480 F6:1 Ip A1:1 C420jpeg\n")
        for k in range(frames):
            shift = np.float32([[1, 0, 2 * (k % 6) - 6], [0, 1, 0]])
            frame = cv2.warpAffine(cv2.resize(photo, (640, 480)), shift, (640, 480),
                                   borderMode=cv2.BORDER_REPLICATE)
            out.write(b"FRAME\n" + cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes())
    return path


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(tmp_path_factory, downloads):
    """One headless Chromium for the module, its fake camera playing a real face."""
    clip = write_clip(tmp_path_factory.mktemp("clip") / "face.y4m")
    session = chrome(clip, downloads)
    yield session
    session.quit()


def start_server(base_path: Path | str, **limits):
    """``fer-serve`` (REST + gRPC, the web page on) over a model base, as the ``serve``
    fixture starts it, for the whole module."""
    from serving.limits import Limits
    from serving.model_store import ModelStore
    from serving.server import LocalServer

    store = ModelStore("fer", str(base_path), poll_seconds=1.0)
    return LocalServer({"fer": store}, "127.0.0.1", free_port(), 0, Limits(**limits)).start()


@pytest.fixture(scope="module")
def bundled():
    """The bundled model (no ``explain`` signature) behind fer-serve."""
    server = start_server(BUNDLED_MODEL_BASE)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def explaining(exported_model, tmp_path_factory):
    """A model the pipeline exported (it has the ``explain`` signature), deployed and served."""
    from components.deploy import deploy

    base = tmp_path_factory.mktemp("web-serving")
    deploy(exported_model, str(base), "fer")
    server = start_server(base / "fer")
    yield server
    server.stop()


def rest_url(server) -> str:
    return f"http://127.0.0.1:{server.rest_port}"


@contextlib.contextmanager
def serving_app(app) -> Iterator[str]:
    """``app`` served by uvicorn in a thread on a free port; yields its URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the page's server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


# --- the page -------------------------------------------------------------------------------


def open_page(driver, url: str) -> None:
    """Load the page and wait until it has asked the model what it serves."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url.rstrip("/") + "/")
    WebDriverWait(driver, 30).until(lambda d: d.execute_script(
        "return document.body.dataset.ready"))


def page_state(driver) -> str:
    return driver.execute_script("return document.body.dataset.state")


def wait_for(driver, condition, timeout: float = 90, what: str = "the page"):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)
    except TimeoutException:
        status = driver.execute_script("return document.getElementById('status-text')"
                                       ".textContent")
        pytest.fail(f"timed out waiting for {what}; state {page_state(driver)!r}, "
                    f"status {status!r}")


def upload(driver, path: Path, *ended: str) -> str:
    """Choose ``path`` in the page's file input; wait for the analysis to end; its state."""
    from selenium.webdriver.common.by import By

    before = driver.execute_script("return document.body.dataset.state")
    driver.execute_script("document.body.dataset.state = 'sent'")
    driver.find_element(By.ID, "file-input").send_keys(str(path))
    state = wait_for(driver, lambda d: page_state(d) in (ended or ENDED) and page_state(d),
                     what=f"the analysis of {path.name} (state was {before!r})")
    return state


def status_text(driver) -> str:
    return driver.execute_script("return document.getElementById('status').innerText")


def shown(driver) -> dict:
    """What the page shows: per face its box (percent of the image), label, top emotion,
    and per class bar the shown percentage and the bar's width."""
    return driver.execute_script("""
      const pct = (s) => parseFloat(s);
      return {
        boxes: [...document.querySelectorAll('#overlay .face-box')].map(b => ({
          left: pct(b.style.left), top: pct(b.style.top), width: pct(b.style.width),
          height: pct(b.style.height), label: b.textContent,
          visible: b.getBoundingClientRect().width > 4})),
        cards: [...document.querySelectorAll('#faces .face-card')].map(c => ({
          emotion: c.dataset.emotion, heading: c.querySelector('h3').textContent,
          bars: [...c.querySelectorAll('.bars li')].map(li => ({
            name: li.querySelector('.name').textContent,
            shown: li.querySelector('.value').textContent,
            width: pct(li.querySelector('.fill').style.width)}))})),
        photo: {shown: !document.getElementById('photo').hidden,
                alt: document.getElementById('photo').alt},
      };""")


def console_errors(driver) -> list[str]:
    """The page's console errors, less the browser's lines for the 4xx/5xx answers the
    tests ask for on purpose."""
    return [e["message"] for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]]


def direct(url: str, photo: Path) -> list[dict]:
    """The faces of ``photo`` as the test finds them itself: MTCNN, aligned crops, one
    ``:predict`` of them all on the REST API."""
    image = cv2.imread(str(photo))
    faces = get_detector("mtcnn").detect(image)
    outputs = RestClient(url).predict_pixels(np.stack([face_crop(image, f) for f in faces]))
    return [{"box": f.box, "probabilities": [float(p) for p in probs],
             "emotion": CLASS_NAMES[int(np.argmax(probs))]}
            for f, probs in zip(faces, outputs[PROBABILITIES])]


def assert_matches(page: dict, expected: list[dict], width: int, height: int) -> None:
    """The page's boxes, top emotions and bars are the direct call's, within rounding."""
    assert len(page["boxes"]) == len(page["cards"]) == len(expected)
    for box, card, want in zip(page["boxes"], page["cards"], expected):
        x, y, w, _ = want["box"]
        assert box["visible"]
        assert box["left"] == pytest.approx(100 * max(x, 0) / width, abs=0.01)
        assert box["top"] == pytest.approx(100 * max(y, 0) / height, abs=0.01)
        assert box["width"] == pytest.approx(100 * w / width, abs=0.2)
        assert card["emotion"] == want["emotion"] and want["emotion"] in box["label"]
        assert [b["name"] for b in card["bars"]] == list(CLASS_NAMES)
        for bar, p in zip(card["bars"], want["probabilities"]):
            assert bar["shown"].endswith("%")
            assert float(bar["shown"][:-1]) == pytest.approx(100 * p, abs=0.05 + 1e-6)
            assert bar["width"] == pytest.approx(100 * p, abs=0.01)


# --- the tests ------------------------------------------------------------------------------


def test_a_group_photo_through_the_file_input_matches_a_direct_rest_call(browser, bundled,
                                                                          downloads, tmp_path):
    from selenium.webdriver.common.by import By

    open_page(browser, rest_url(bundled))
    assert "Facial emotion recognition" in browser.title
    assert "version 1" in browser.find_element(By.ID, "model-status").text
    assert upload(browser, GROUP) == "done"
    page = shown(browser)
    expected = direct(rest_url(bundled), GROUP)
    assert len(expected) == 6
    assert_matches(page, expected, 1280, 886)
    assert page["photo"]["shown"] and page["photo"]["alt"].startswith(
        "The image, with 6 faces boxed")
    assert "6 faces" in status_text(browser)
    for crop in browser.find_elements(By.CSS_SELECTOR, ".face-thumb img"):
        assert crop.get_attribute("alt") and crop.get_property("naturalWidth") == 48
    browser.save_screenshot(str(tmp_path / "group.png"))

    browser.find_element(By.ID, "download-csv").click()
    browser.find_element(By.ID, "download-json").click()
    csv_file, json_file = downloads / "insightface_t1-emotions.csv", downloads / \
        "insightface_t1-emotions.json"
    wait_for(browser, lambda d: csv_file.is_file() and json_file.is_file(), 20, "the downloads")
    rows = list(csv.DictReader(io.StringIO(csv_file.read_text())))
    assert [r["emotion"] for r in rows] == [f["emotion"] for f in expected]
    for row, want in zip(rows, expected):
        assert [float(row[c]) for c in CLASS_NAMES] == pytest.approx(want["probabilities"],
                                                                     abs=1e-5)
    saved = json.loads(json_file.read_text())
    assert saved["image"] == GROUP.name and (saved["width"], saved["height"]) == (1280, 886)
    assert [f["emotion"] for f in saved["faces"]] == [f["emotion"] for f in expected]
    assert console_errors(browser) == []


def test_the_webcam_shows_live_results_from_a_real_face(browser, bundled, tmp_path):
    from selenium.webdriver.common.by import By

    open_page(browser, rest_url(bundled))
    browser.find_element(By.ID, "webcam-start").click()
    wait_for(browser, lambda d: d.execute_script(
        "return +(document.body.dataset.liveFrames || 0) >= 2 && "
        "document.querySelectorAll('#overlay .face-box').length === 1"), 60,
        "two live frames with a face boxed")
    page = shown(browser)
    assert page_state(browser) == "live"
    assert browser.find_element(By.ID, "video").is_displayed()
    (box,) = page["boxes"]
    (card,) = page["cards"]
    assert card["emotion"] in CLASS_NAMES and card["emotion"] in box["label"]
    assert 25 < box["left"] + box["width"] / 2 < 75  # the face, near the frame's middle
    assert "Live: 1 face" in status_text(browser)
    browser.save_screenshot(str(tmp_path / "webcam.png"))

    browser.find_element(By.ID, "webcam-stop").click()
    wait_for(browser, lambda d: page_state(d) == "done", 20, "the webcam to stop")
    assert not browser.find_element(By.ID, "video").is_displayed()
    assert len(shown(browser)["cards"]) == 1  # the last frame's results stay
    assert browser.find_element(By.ID, "webcam-start").is_enabled()
    assert console_errors(browser) == []


def test_explanations_show_a_heatmap_over_each_face(browser, explaining, tmp_path):
    from selenium.webdriver.common.by import By

    open_page(browser, rest_url(explaining))
    assert "explanations available" in browser.find_element(By.ID, "model-status").text
    browser.find_element(By.ID, "explain").click()
    assert upload(browser, PORTRAIT) == "done"
    toggle = browser.find_element(By.CSS_SELECTOR, ".explain-toggle")
    heatmap = browser.find_element(By.CSS_SELECTOR, ".face-thumb .heatmap")
    assert not heatmap.is_displayed() and toggle.get_attribute("aria-pressed") == "false"
    toggle.click()
    assert heatmap.is_displayed() and toggle.get_attribute("aria-pressed") == "true"
    assert heatmap.get_property("naturalWidth") == 48 and "Grad-CAM" in heatmap.get_attribute(
        "alt")
    browser.find_element(By.CSS_SELECTOR, ".face-card").screenshot(str(tmp_path / "heat.png"))
    toggle.click()
    assert not heatmap.is_displayed()


def test_a_model_without_explanations_says_so(browser, bundled):
    from selenium.webdriver.common.by import By

    open_page(browser, rest_url(bundled))
    note = browser.find_element(By.ID, "explain-note")
    assert note.text.lower() == NO_EXPLAIN + "."
    browser.find_element(By.ID, "explain").click()
    assert upload(browser, PORTRAIT) == "done"
    card_note = browser.find_element(By.CSS_SELECTOR, ".face-card .explain-unavailable")
    assert card_note.is_displayed() and NO_EXPLAIN in card_note.text.lower()
    assert NO_EXPLAIN in status_text(browser).lower()
    assert not browser.find_elements(By.CSS_SELECTOR, ".explain-toggle")


def test_error_states_and_the_server_stays_up(browser, serve, tmp_path):
    from selenium.webdriver.common.by import By

    server = serve(BUNDLED_MODEL_BASE, max_image_pixels=400_000, max_concurrent_inferences=1)
    url = rest_url(server)
    open_page(browser, url)

    text = tmp_path / "notes.jpg"  # named like an image, holding text
    text.write_text("not an image at all\n")
    assert upload(browser, text) == "error"
    assert browser.execute_script("return document.body.dataset.error") == "not_image"
    assert "Not an image" in status_text(browser)
    assert not shown(browser)["cards"]
    browser.save_screenshot(str(tmp_path / "not-an-image.png"))

    assert upload(browser, GROUP) == "error"  # 1,134,080 pixels, over the limit
    assert browser.execute_script("return document.body.dataset.error") == "too_large"
    assert "Image too large: it has 1,134,080 pixels; the limit is 400,000" in \
        status_text(browser)

    wall = tmp_path / "wall.jpg"  # a real photo's background, no face in it
    cv2.imwrite(str(wall), cv2.imread(str(GROUP))[0:140, 0:400])
    assert upload(browser, wall) == "no-face"
    assert "No face found" in status_text(browser)
    browser.save_screenshot(str(tmp_path / "no-face.png"))
    browser.find_element(By.ID, "classify-whole").click()
    wait_for(browser, lambda d: page_state(d) == "done", 30, "the whole image's result")
    (box,) = shown(browser)["boxes"]
    assert (box["left"], box["top"], box["width"], box["height"]) == (0, 0, 100, 100)
    assert "whole image" in browser.find_element(By.ID, "summary").text

    # Four analyses at once, one inference slot: each is answered (or told to retry), none
    # waits for ever on the slot its own predict needs.
    data = PORTRAIT.read_bytes()

    def analyze(_):
        return requests.post(f"{url}/web/analyze", data=data, timeout=60).status_code

    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(analyze, range(4)))
    assert set(codes) <= {200, 503} and 200 in codes, codes
    for body, status in ((b"", 400), (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, 400)):
        answer = requests.post(f"{url}/web/analyze", data=body, timeout=10)
        assert answer.status_code == status and answer.json()["reason"] == "not_image"
    bad = requests.post(f"{url}/web/analyze?detector=dlib", data=data, timeout=10)
    assert bad.status_code == 400 and "unknown face detector 'dlib'" in bad.json()["error"]
    assert requests.get(f"{url}/v1/models/fer", timeout=10).status_code == 200
    assert requests.get(f"{url}/web/model", timeout=10).json()["limits"][
        "max_image_pixels"] == 400_000
    assert upload(browser, PORTRAIT) == "done"  # the page goes on too
    assert console_errors(browser) == []


def test_an_unreachable_model_server_is_a_clear_state(browser, tmp_path):
    from serving.web.app import create_web_app

    dead = f"http://127.0.0.1:{free_port()}"
    with serving_app(create_web_app(dead, timeout=5)) as url:
        open_page(browser, url)
        assert browser.execute_script("return document.body.dataset.ready") == "no-model"
        assert "cannot be reached" in browser.find_element("id", "model-status").text
        assert upload(browser, PORTRAIT) == "error"
        assert browser.execute_script("return document.body.dataset.error") == "unreachable"
        assert f"Cannot reach the model server at {dead}" in status_text(browser)
        assert browser.find_element("id", "retry").is_displayed()
        browser.save_screenshot(str(tmp_path / "unreachable.png"))


def test_the_web_command_serves_the_page_in_front_of_a_rest_url(browser, explaining,
                                                                tmp_path):
    from selenium.webdriver.common.by import By

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "web", "--url",
                             rest_url(explaining), "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(300):
            try:
                requests.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except requests.ConnectionError:
                assert proc.poll() is None, proc.stdout.read()
                time.sleep(0.1)
        open_page(browser, f"http://127.0.0.1:{port}")
        assert upload(browser, GROUP) == "done"
        assert_matches(shown(browser), direct(rest_url(explaining), GROUP), 1280, 886)
        browser.find_element(By.ID, "explain").click()  # the same image again, explained
        wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".explain-toggle"))
                 == 6, 60, "six explained faces")
        browser.find_elements(By.CSS_SELECTOR, ".explain-toggle")[2].click()
        assert browser.find_elements(By.CSS_SELECTOR, ".heatmap")[2].is_displayed()
        browser.save_screenshot(str(tmp_path / "web-command.png"))
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert f"the page: http://127.0.0.1:{port}/" in out
    assert f"model 'fer' version 1 at {rest_url(explaining)} (explains)" in out


def test_fer_serve_without_the_page(tmp_path):
    from serving.model_store import ModelStore
    from serving.server import LocalServer, build_parser

    assert build_parser().parse_args(["--no_web_page"]).no_web_page
    assert not build_parser().parse_args([]).no_web_page
    server = LocalServer({"fer": ModelStore("fer", str(BUNDLED_MODEL_BASE))}, "127.0.0.1",
                         free_port(), 0, web_page=False).start()
    try:
        assert requests.get(rest_url(server) + "/", timeout=10).status_code == 404
        assert requests.get(rest_url(server) + "/v1/models/fer", timeout=10).status_code == 200
    finally:
        server.stop()


# --- the README's screenshot ----------------------------------------------------------------


def readme_screenshot(path: Path, max_bytes: int = 150_000) -> Path:
    """The page with the group photo analysed by the bundled model, as a small PNG."""
    from PIL import Image

    server = start_server(BUNDLED_MODEL_BASE)
    driver = chrome(width=1200, height=1140)
    try:
        open_page(driver, rest_url(server))
        upload(driver, GROUP)
        driver.execute_script("document.querySelectorAll('.face-card')[2]"
                              ".dispatchEvent(new Event('mouseenter'))")
        png = driver.get_screenshot_as_png()
    finally:
        driver.quit()
        server.stop()
    image = Image.open(io.BytesIO(png)).convert("RGB")
    for width in (1200, 1100, 1000, 900, 800):
        small = image.resize((width, round(image.height * width / image.width)),
                             Image.LANCZOS) if width != image.width else image
        buffer = io.BytesIO()
        small.quantize(colors=96, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
                       ).save(buffer, "PNG", optimize=True)
        if buffer.tell() <= max_bytes:
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return path


if __name__ == "__main__":
    written = readme_screenshot(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/web-page.png"))
    print(f"{written}: {written.stat().st_size:,} bytes")
