"""The app in a real browser (headless Chromium through Playwright): generate, then a short fine-tune end to end.

Screenshots go to tests/artifacts/ (gitignored) so a person can look at the page.
"""

import time
import zipfile
from pathlib import Path

import pytest

from test_app import launch_app, make_zip, stop_app

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.skip("BROWSER TESTS SKIPPED: /usr/bin/chromium is missing; install it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("browser-app")
    proc, url, _ = launch_app(tmp, tiny_model_dir)
    yield url
    stop_app(proc)


@pytest.fixture
def context(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(WAIT_MS)
    yield ctx
    ctx.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def prompt_box(page):
    return page.locator("#prompt textarea, #prompt input").first


def test_generate_from_the_prompt_box(context, app_url):
    page = context.new_page()
    page.goto(app_url)
    prompt_box(page).fill("a red apple")
    prompt_box(page).press("Enter")
    page.locator("#gallery img").nth(3).wait_for()  # four images by default
    assert page.locator("#gallery img").count() == 4
    assert "Seed used" in page.locator("#gen-status").inner_text()
    shot(page, "generate")

    prompt_box(page).fill("")
    page.locator("#generate-btn").click()
    page.get_by_text("Type a prompt first").first.wait_for()
    shot(page, "generate-empty-prompt")


def test_finetune_shows_progress_and_offers_the_new_model(context, app_url, tmp_path):
    page = context.new_page()
    page.goto(app_url)
    page.get_by_role("tab", name="Fine-tune").click()
    page.locator("#train-files input[type=file]").set_input_files(str(make_zip(tmp_path / "data.zip")))
    page.locator("#report").get_by_text("Found 8 pairs").wait_for()
    page.get_by_label("Name (optional)").fill("browser run")
    page.get_by_text("Advanced").click()
    for elem_id, value in (("steps", "400"), ("batch-size", "4")):
        box = page.locator(f"#{elem_id} input[type=number]")
        box.fill(value)
        box.press("Tab")
    page.locator("#start-btn").click()
    page.locator("#train-status").get_by_text("Started").wait_for()

    # Closing the page does not lose the run: a new page in the same browser picks its progress up.
    page.close()
    page = context.new_page()
    page.goto(app_url)
    page.get_by_role("tab", name="Fine-tune").click()
    progress = page.locator("#progress .t2i-progress")
    assert progress.get_attribute("data-status") == "running"
    samples = set()
    deadline = time.monotonic() + 120
    while len(samples) < 2 and time.monotonic() < deadline:
        img = page.locator("#sample img")
        if img.count():
            samples.add(img.first.get_attribute("src"))
        time.sleep(0.3)
    assert len(samples) >= 2, f"the sample grid did not update while training: {samples}"
    assert progress.get_attribute("data-status") == "running", "the run ended before Stop could be tested"
    shot(page, "finetune-running")

    page.locator("#stop-btn").click()
    page.locator("#progress .t2i-progress[data-status=stopped]").wait_for()
    assert "checkpoint is kept" in progress.inner_text()
    shot(page, "finetune-stopped")
    with page.expect_download() as download:
        page.locator("#download-model").click()
    with zipfile.ZipFile(download.value.path()) as zf:
        assert "model/model_index.json" in zf.namelist()

    page.get_by_role("tab", name="Generate").click()
    assert "browser run" in page.locator("#model input").input_value()
    prompt_box(page).fill("red square")
    page.locator("#generate-btn").click()
    page.locator("#gallery img").nth(3).wait_for()
    shot(page, "generate-with-finetune")
