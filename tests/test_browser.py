"""A real headless Chromium on the river page of a running `feeds run`: stories shown, a new one
arriving live without a reload, no console errors, and hostile payloads that never execute."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, FeedServer, rss, run_feeds, story_item, write_config
from tests.test_server import free_port

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    if os.environ.get("CI"):
        raise RuntimeError("CI needs Debian's chromium and chromium-driver (see .ci/run)")
    pytest.skip("needs Debian's chromium and chromium-driver", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAYAAABytg0kAAAAEklEQVR4nGNgYGD4z8DAwMAAAA0BAQCX6Q2jAAAAAElFTkSuQmCC")
HOSTILE = {
    "title": "&lt;img src=x onerror=&quot;document.title='pwned-title'&quot;&gt;Hostile story",
    "link": "https://evil.example/story",
    "guid": "hostile",
    "description": (
        "<![CDATA[<p onmouseover=\"document.title='pwned-hover'\">Hello</p><script>document.title='pwned-script'</script>"
        '<img src="x" onerror="document.title=\'pwned-img\'"><a id="js" href="javascript:document.title=\'pwned-link\'">click</a>'
        "<svg onload=\"document.title='pwned-svg'\"></svg><iframe src=\"javascript:parent.document.title='pwned-frame'\"></iframe>"
        '<form action="javascript:alert(1)"><button>go</button></form>]]>'
    ),
    "pubDate": "Fri, 20 Nov 2026 06:00:00 GMT",
}


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or ""
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=900,1200",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER or ""))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def daemon(tmp_path: Path, server: FeedServer) -> Iterator[tuple[str, Path]]:
    server.serve("/a", rss(story_item(1), story_item(2), HOSTILE, title="Outlet A"))
    server.serve("/x", PNG, content_type="image/png")  # the hostile story's image, resolved against the feed URL
    port = free_port()
    config = write_config(tmp_path, [{"name": "a", "url": server.url("/a"), "interval": "1h"}], extra=f"tick: 1s\nserver: {{port: {port}}}")
    process = subprocess.Popen([sys.executable, "-m", "feeds", "run", "-c", str(config)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if (
                requests.get(f"{base}/health", timeout=1).status_code == 200
                and b"Story 2" in requests.get(f"{base}/all.atom", timeout=1).content
            ):
                break
        except requests.RequestException:
            pass
        time.sleep(0.2)
    yield base, config
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr


def console_errors(driver: webdriver.Chrome) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]


def test_river_page_shows_stories_and_a_new_one_arrives_live(
    browser: webdriver.Chrome, daemon: tuple[str, Path], server: FeedServer, tmp_path: Path
) -> None:
    base, config = daemon
    browser.get(f"{base}/all/")
    titles = [h.text for h in browser.find_elements(By.CSS_SELECTOR, "article.story h2")]
    assert "Story 1" in titles and "Story 2" in titles
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "live").is_displayed())  # the stream is open
    assert "ago" in browser.find_element(By.CSS_SELECTOR, "article.story time").text  # relative times by script
    browser.execute_script("window.__sameDocument = true;")
    server.serve("/a", rss(story_item(1), story_item(2), HOSTILE, story_item(3), title="Outlet A"))
    assert run_feeds("sources", "reset", "a", "-c", str(config)).returncode == 0  # due now: the daemon polls it
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.CSS_SELECTOR, "article.story h2").text == "Story 3")
    first = browser.find_element(By.CSS_SELECTOR, "article.story")
    assert "new" in first.get_attribute("class")
    assert browser.execute_script("return window.__sameDocument === true;")  # no reload happened
    browser.save_screenshot(str(tmp_path / "river.png"))
    assert (tmp_path / "river.png").stat().st_size > 10_000
    assert console_errors(browser) == []


def test_hostile_payloads_never_execute(browser: webdriver.Chrome, daemon: tuple[str, Path]) -> None:
    base, _ = daemon
    browser.get(f"{base}/all/")
    title = browser.title
    hostile = next(a for a in browser.find_elements(By.CSS_SELECTOR, "article.story") if "Hostile story" in a.text)
    for element in hostile.find_elements(By.CSS_SELECTOR, "p, a, img"):
        browser.execute_script("arguments[0].dispatchEvent(new MouseEvent('mouseover', {bubbles: true}));", element)
    links = hostile.find_elements(By.CSS_SELECTOR, ".body a")
    for link in links:
        assert not (link.get_attribute("href") or "").startswith("javascript:")
    assert hostile.find_elements(By.CSS_SELECTOR, "script, iframe, svg, form") == []
    time.sleep(0.5)
    assert browser.title == title and "pwned" not in browser.title
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018
    assert [e for e in console_errors(browser) if "Content Security Policy" not in e] == []
