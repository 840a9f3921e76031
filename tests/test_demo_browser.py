"""End-to-end: the demo page in real headless Chromium (Debian's ``chromium``, driven by Playwright).

It opens the page, uploads an image, classifies it, runs a text search, an image -> text search and
a composed query, checks what the page shows against the backend's own answers, and saves a
screenshot of every tab under ``test-artifacts/demo/``. Chromium is installed with apt-get when
missing (root only); the test is skipped, with the reason, only where that is impossible.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
from PIL import Image

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "demo"


def install_chromium() -> str | None:
    """Install Debian's chromium if it is missing; returns why it cannot be had, or None."""
    if os.path.exists(CHROMIUM):
        return None
    if shutil.which("apt-get") is None:
        return "chromium is not installed and there is no apt-get to install it"
    if os.geteuid() != 0:
        return "chromium is not installed and installing it needs root (run: apt-get install -y chromium)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "-o", "DPkg::Lock::Timeout=120", "chromium"]
    log = []
    for command in (install, ["apt-get", "update", "-qq"], install):
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as err:
            log.append(f"{' '.join(command)}: {err}")
            continue
        log.append(f"{' '.join(command)}: exit {done.returncode} {done.stderr.strip()[-300:]}")
        if command is install and done.returncode == 0 and os.path.exists(CHROMIUM):
            return None
    return "could not install chromium with apt-get: " + " | ".join(log)


@pytest.fixture(scope="module")
def browser():
    reason = install_chromium()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


def test_demo_in_headless_chromium(demo_server, browser, tmp_path):
    from playwright.sync_api import expect

    s = demo_server
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # An indexed scene, enlarged so the page shows it at a readable size.
    upload = str(tmp_path / "scene.png")
    Image.open(s.image_paths[3]).resize((256, 256), Image.NEAREST).save(upload)
    labels = ["red circle", "blue square", "green triangle", "purple cross"]
    # What the page must show: the backend's own answers for the same inputs.
    want_top_label = next(iter(s.backend.classify(upload, ", ".join(labels), None, "single: 'a photo of a {}.'")))
    want_top_image = s.backend.search_text_to_image("a large red circle", 8)[0].label
    want_top_caption = s.backend.search_image_to_text(upload, 8)[0].label
    want_top_composed = s.backend.search_composed(upload, "blue", "", 2.0, 8)[0].label

    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    errors: list[str] = []
    blocked: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    local = urlparse(s.url).netloc

    def offline_only(route):
        # Tests run offline: anything the page asks of another host is refused (and listed).
        if urlparse(route.request.url).netloc == local or route.request.url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    page.route("**/*", offline_only)
    page.set_default_timeout(60_000)
    page.goto(s.url)
    expect(page.get_by_role("tab", name="Zero-shot classification")).to_be_visible()

    # Zero-shot classification: upload, type labels, classify.
    page.locator("#zs-image input[type=file]").set_input_files(upload)
    expect(page.locator("#zs-image img").first).to_be_visible()
    page.locator("#zs-labels textarea").fill(", ".join(labels))
    page.locator("#zs-button").click()
    expect(page.locator("#zs-output")).to_contain_text(want_top_label)
    for label in labels:
        expect(page.locator("#zs-output")).to_contain_text(label)
    page.screenshot(path=str(ARTIFACTS / "zero_shot.png"), full_page=True)

    # Text -> image search.
    page.get_by_role("tab", name="Text -> image search").click()
    page.locator("#ti-query textarea").fill("a large red circle")
    page.locator("#ti-button").click()
    expect(page.locator("#ti-gallery img")).to_have_count(8)
    expect(page.locator("#ti-gallery")).to_contain_text(want_top_image)
    page.screenshot(path=str(ARTIFACTS / "text_to_image.png"), full_page=True)

    # Image -> text search.
    page.get_by_role("tab", name="Image -> text search").click()
    page.locator("#it-image input[type=file]").set_input_files(upload)
    expect(page.locator("#it-image img").first).to_be_visible()
    page.locator("#it-button").click()
    expect(page.locator("#it-table")).to_contain_text(want_top_caption[:40])
    page.screenshot(path=str(ARTIFACTS / "image_to_text.png"), full_page=True)

    # Image + text query.
    page.get_by_role("tab", name="Image + text query").click()
    page.locator("#cq-image input[type=file]").set_input_files(upload)
    expect(page.locator("#cq-image img").first).to_be_visible()
    page.locator("#cq-text textarea").fill("blue")
    page.locator("#cq-button").click()
    expect(page.locator("#cq-gallery img")).to_have_count(8)
    expect(page.locator("#cq-gallery")).to_contain_text(want_top_composed)
    page.screenshot(path=str(ARTIFACTS / "composed.png"), full_page=True)

    # About.
    page.get_by_role("tab", name="About").click()
    expect(page.locator("#about")).to_contain_text("tiny-test-model")
    expect(page.locator("#about")).to_contain_text(f"image collection: {len(s.image_paths)} vectors")
    page.screenshot(path=str(ARTIFACTS / "about.png"), full_page=True)

    # A non-image upload gets the clear message in the page, not a generic error.
    page.get_by_role("tab", name="Zero-shot classification").click()
    fake = tmp_path / "notes.png"
    fake.write_text("not an image")
    page.locator("#zs-image button[aria-label='Remove Image']").click()
    page.locator("#zs-image input[type=file]").set_input_files(str(fake))
    page.locator("#zs-button").click()
    expect(page.get_by_text("'notes.png' is not an image").first).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "bad_upload.png"), full_page=True)
    page.close()

    assert not errors, f"JavaScript errors in the page: {errors}"
    for name in ("zero_shot", "text_to_image", "image_to_text", "composed", "about", "bad_upload"):
        assert (ARTIFACTS / f"{name}.png").stat().st_size > 10_000
