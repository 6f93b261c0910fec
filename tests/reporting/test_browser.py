"""Generated reports opened in a real headless Chromium (Debian's chromium and
chromium-driver, installed here when missing): every embedded image decodes, the console
has no errors, and a screenshot shows a drawn page."""

from __future__ import annotations

import io
import shutil
import subprocess

import pytest
from PIL import Image, ImageStat

PACKAGES = ["chromium", "chromium-driver"]


def _install() -> str | None:
    """Chromium and its driver on PATH, installed with apt-get when missing; the reason
    when that is impossible."""
    if shutil.which("chromium") and shutil.which("chromedriver"):
        return None
    if not shutil.which("apt-get"):
        return "chromium is missing and there is no apt-get to install it"
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    for cmd in (install, ["apt-get", "update", "-q"], install):
        try:
            subprocess.run(cmd, capture_output=True, timeout=900, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"apt-get failed ({type(e).__name__})"
        if shutil.which("chromium") and shutil.which("chromedriver"):
            return None
    return "apt-get could not install chromium and chromium-driver (no root, or no mirror)"


@pytest.fixture(scope="module")
def browser():
    reason = _install()
    if reason:
        pytest.skip(reason)
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--window-size=1200,900",
    ):  # fmt: skip
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver")))
    yield driver
    driver.quit()


DECODED = """
return Array.from(document.images).map(
  (im) => [im.alt, im.complete && im.naturalWidth > 0 && im.naturalHeight > 0]);
"""


@pytest.mark.parametrize("which", ["teacher_run", "pretrain_run", "finetune_run"])
def test_a_report_renders_in_chromium(browser, which, request, tmp_path):
    run = request.getfixturevalue(which)
    browser.get_log("browser")  # drop what earlier pages logged
    browser.get((run / "report.html").resolve().as_uri())
    shown = browser.execute_script(DECODED)
    assert len(shown) >= 3 and all(ok for _, ok in shown), shown
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == []
    height = browser.execute_script("return document.body.scrollHeight")
    browser.set_window_size(1200, min(height + 100, 8000))
    png = browser.get_screenshot_as_png()
    (tmp_path / f"{which}.png").write_bytes(png)
    shot = Image.open(io.BytesIO(png)).convert("L")
    assert shot.size[0] >= 1000 and max(ImageStat.Stat(shot).stddev) > 20  # not a blank page
    assert browser.title.startswith(run.name) or run.name in browser.title


def test_the_check_sees_a_broken_image_and_a_script_error(browser, tmp_path):
    page = tmp_path / "bad.html"
    page.write_text(
        "<!DOCTYPE html><html><head><title>bad</title></head><body>"
        '<img alt="cut" src="data:image/png;base64,iVBORw0KGgoAAAA">'
        "<script>not_defined()</script></body></html>"
    )
    browser.get_log("browser")
    browser.get(page.as_uri())
    assert browser.execute_script(DECODED) == [["cut", False]]
    assert [e["level"] for e in browser.get_log("browser")] == ["SEVERE"]
