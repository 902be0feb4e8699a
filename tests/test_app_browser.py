"""The app in a real browser (headless Debian Chromium through Playwright), on the embedded default.

One walk through the product: upload images and train, watch the progress bar reach the end, find the concept
in the library, compose it with the shipped kettle (trained through the API beside it), generate and see the
gallery, evaluate and see the table. A screenshot of each tab is kept under the artifacts folder
(`$BORA_TEST_ARTIFACTS`, else pytest's tmp folder) for people to look at.

Chromium comes from Debian (`scripts/setup_browser.sh`), never from `playwright install`. Without it the test
is skipped, unless BORA_REQUIRE_BROWSER=1 (scripts/test.sh sets it), where its absence fails the run.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from app_fixtures import draw_images, serve, wait_for_job

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STEPS = 6
TIMEOUT_MS = 600_000  # a training job on a loaded, shared 2-core machine; alone it ends in seconds

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*no_silent_downcasting.*:Warning", "ignore:The copy keyword is deprecated:Warning"
)


def _require_browser():
    missing = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = "playwright is not installed (pip install playwright==1.65.2)"
    if missing is None and not Path(CHROMIUM).is_file():
        missing = f"{CHROMIUM} is missing (bash scripts/setup_browser.sh installs Debian's chromium)"
    if missing and os.environ.get("BORA_REQUIRE_BROWSER") == "1":
        pytest.fail(missing)
    if missing:
        pytest.skip(missing)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    folder = os.environ.get("BORA_TEST_ARTIFACTS")
    path = Path(folder) / "app" if folder else tmp_path_factory.mktemp("artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser_app(tmp_path_factory):
    _require_browser()
    from gradio_client import Client

    root = tmp_path_factory.mktemp("browser_app")
    demo, ctx, url = serve(root)
    client = Client(url, verbose=False, download_files=str(root / "downloads"))
    yield ctx, client, url, root
    ctx.jobs.shutdown()
    demo.close()


@pytest.fixture(scope="module")
def page(browser_app):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(browser_app[2])
        page.locator("#train-start").wait_for()
        yield page
        browser.close()


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def _pick(page, elem_id: str, values: list[str]) -> None:
    """Type each value into a multiselect dropdown and confirm it with Enter."""
    field = page.locator(f"#{elem_id} input")
    for value in values:
        field.click()
        field.fill(value)
        field.press("Enter")
    page.keyboard.press("Escape")


def _number(page, elem_id: str, value) -> None:
    field = page.locator(f"#{elem_id} input[type=number]")
    field.fill(str(value))
    field.press("Tab")


def test_train_compose_generate_evaluate_in_the_browser(browser_app, page, artifacts):
    try:
        _walk_through(browser_app, page, artifacts)
    except Exception:
        page.screenshot(path=str(artifacts / "failure.png"), full_page=True)  # what the page showed
        raise


def _upload(page, images: list[Path]) -> None:
    """Set the files and wait for the list to show them (once more if the first set was lost while the page
    was still wiring its handlers)."""
    for attempt in range(2):
        page.locator("#train-files input[type=file]").set_input_files([str(p) for p in images])
        try:
            # Gradio renders a file name as two spans ("mug_2", ".png"); its accessible label is the whole name.
            shown = page.locator(f'#train-files [aria-label="{images[-1].name}"]').first
            shown.wait_for(timeout=30_000 if attempt == 0 else TIMEOUT_MS)
            return
        except Exception:
            if attempt:
                raise


def _walk_through(browser_app, page, artifacts) -> None:
    from playwright.sync_api import expect

    _, client, _, root = browser_app
    images = draw_images(root / "upload", count=3)

    # A mistake is shown in the page in words, and the page keeps working.
    page.locator("#train-start").click()
    expect(page.get_by_text("name: give the new concept a name").first).to_be_visible(timeout=TIMEOUT_MS)
    page.locator(".toast-close").first.click()  # dismissed, so the screenshots below show the page itself

    # Switching to a concept folder fills the form with the folder's own recipe: the first folder is a world
    # concept, which trains its token's embedding, so the box gets ticked. Back to an upload, unticked.
    embedding = page.locator("#train-train-embedding input[type=checkbox]")
    expect(embedding).not_to_be_checked()
    page.locator("#train-source").get_by_label("folder").check()
    expect(embedding).to_be_checked(timeout=60_000)
    expect(page.locator("#train-targets input")).to_have_value(re.compile(r"\(cross_kv\)$"))  # its layers too
    expect(page.locator("#train-lock-weight input")).to_have_value("2")  # and its prompt lock
    page.locator("#train-source").get_by_label("upload").check()
    embedding.uncheck()

    # Train: upload, name, token, class word, a short run with samples; the bar must reach the end.
    _upload(page, images)
    page.locator("#train-name textarea, #train-name input").first.fill("mug")
    page.locator("#train-token textarea, #train-token input").first.fill("zqmug")
    page.locator("#train-class textarea, #train-class input").first.fill("mug")
    _number(page, "train-steps", STEPS)
    _number(page, "train-sample-every", 3)
    page.locator("#train-start").click()
    page.locator('#train-progress[data-status="done"]').wait_for()
    bar = page.locator("#train-progress progress")
    assert bar.get_attribute("value") == bar.get_attribute("max") == str(STEPS)
    assert f"step {STEPS} / {STEPS} (100%)" in page.locator("#train-status").inner_text()
    page.locator("#train-samples img").first.wait_for()
    assert page.locator("#train-samples img").count() >= 1
    page.screenshot(path=str(artifacts / "app_train.png"), full_page=True)

    # The shipped kettle, trained beside it through the API (same queue, same slot ledger).
    form = {
        "source": "folder",
        "folder": "kettle",
        "method": "sbora_fa",
        "steps": STEPS,
        "train_embedding": False,
    }
    job, _ = client.predict(form, [], api_name="/train_start")
    assert wait_for_job(client, job)["status"] == "done"

    # Library: both concepts, with method and token.
    _tab(page, "Library")
    table = page.locator("#library-table")
    expect(table).to_contain_text("zqmug", timeout=TIMEOUT_MS)
    text = table.inner_text()
    assert "qwiv" in text and text.count("sbora_fa") == 2 and "embedded:world-base-2" in text
    page.screenshot(path=str(artifacts / "app_library.png"), full_page=True)

    # Compose & generate: the interference check first, then four images in the gallery.
    _tab(page, "Compose & generate")
    _pick(page, "compose-concepts", ["mug", "kettle"])
    page.get_by_role("button", name="Check interference").click()
    expect(page.locator("#compose-report")).to_contain_text("No slot overlap", timeout=TIMEOUT_MS)
    page.locator("#compose-prompt textarea, #compose-prompt input").first.fill(
        "a photo of zqmug mug and qwiv kettle"
    )
    _number(page, "compose-steps", 4)
    page.locator("#compose-generate").click()
    expect(page.locator("#compose-message")).to_contain_text("4 image(s)", timeout=TIMEOUT_MS)
    assert page.locator("#compose-gallery img").count() >= 4
    page.screenshot(path=str(artifacts / "app_compose.png"), full_page=True)

    # Evaluate: the table with each concept alone and composed.
    _tab(page, "Evaluate & compare")
    _pick(page, "eval-concepts", ["mug", "kettle"])
    _number(page, "eval-steps", 2)
    page.locator("#eval-run").click()
    expect(page.locator("#eval-message")).to_contain_text("retention", timeout=TIMEOUT_MS)
    rows = page.locator("#eval-table").inner_text()
    assert rows.count("composed") == 2 and rows.count("alone") == 2
    page.screenshot(path=str(artifacts / "app_evaluate.png"), full_page=True)

    if os.environ.get("BORA_APP_SCREENSHOTS_TO_DOCS") == "1":
        docs = Path(__file__).resolve().parents[1] / "docs" / "img"
        docs.mkdir(parents=True, exist_ok=True)
        for shot in artifacts.glob("app_*.png"):
            shutil.copyfile(shot, docs / shot.name)
