"""A real headless Chromium on the river page of a running `feeds run`: stories shown, a new one
arriving live without a reload, no console errors, and hostile payloads that never execute."""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, FeedServer, rss, run_feeds, story_item, wait_for, write_config
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


CONTRAST = """
function parse(c) { var m = c.match(/[\\d.]+/g).map(Number); return m.length > 3 && m[3] === 0 ? null : m.slice(0, 3); }
function lum(rgb) {
  var v = rgb.map(function (x) { x /= 255; return x <= 0.03928 ? x / 12.92 : Math.pow((x + 0.055) / 1.055, 2.4); });
  return 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2];
}
function background(el) {
  for (; el; el = el.parentElement) { var bg = parse(getComputedStyle(el).backgroundColor); if (bg) return bg; }
  return [255, 255, 255];
}
var worst = [];
document.querySelectorAll("body *").forEach(function (el) {
  var own = Array.prototype.some.call(el.childNodes, function (n) { return n.nodeType === 3 && n.textContent.trim(); });
  if (!own || !el.getClientRects().length) return;
  var a = lum(parse(getComputedStyle(el).color)), b = lum(background(el));
  var ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  if (ratio < 4.5) worst.push(el.tagName + "." + el.className + " " + ratio.toFixed(2) + ": " + el.textContent.trim().slice(0, 40));
});
return {worst: worst, body: getComputedStyle(document.body).backgroundColor};
"""


def test_every_text_meets_wcag_aa_contrast_in_light_and_dark_mode(browser: webdriver.Chrome, daemon: tuple[str, Path]) -> None:
    base, _ = daemon
    browser.get(f"{base}/all/")
    story = browser.find_element(By.CSS_SELECTOR, "article.story p.more a").get_attribute("href")
    for scheme, body in (("light", "rgb(255, 255, 255)"), ("dark", "rgb(21, 21, 21)")):
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": scheme}]})
        for url in (f"{base}/", f"{base}/all/", f"{base}/sources", story):
            browser.get(url)
            found = browser.execute_script(CONTRAST)
            assert found["body"] == body, (scheme, url)
            assert found["worst"] == [], (scheme, url)  # every text at least 4.5:1 on what is behind it (computed styles)


def test_older_stories_load_in_place_and_times_read_in_days(
    browser: webdriver.Chrome, daemon: tuple[str, Path], server: FeedServer
) -> None:
    base, config = daemon
    server.serve("/a", rss(*(story_item(n) for n in range(1, 26)), title="Outlet A"))
    assert run_feeds("sources", "reset", "a", "-c", str(config)).returncode == 0
    assert wait_for(lambda: b"Story 25" in requests.get(f"{base}/all.atom", timeout=2).content)
    browser.get(f"{base}/all/")
    assert len(browser.find_elements(By.CSS_SELECTOR, "article.story")) == 20
    browser.execute_script("window.__sameDocument = true;")
    browser.find_element(By.CSS_SELECTOR, "nav.pages a.older").click()
    WebDriverWait(browser, 10).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "article.story")) == 26)  # and the hostile one
    assert browser.execute_script("return window.__sameDocument === true;")  # appended, not a new page
    assert browser.find_elements(By.CSS_SELECTOR, "nav.pages a.older") == []
    for time_element in browser.find_elements(By.CSS_SELECTOR, "article.story time"):
        assert re.fullmatch(r"\d+ days ago", time_element.text), time_element.text  # stories of 20 Nov 2026: "18 days ago"
        assert time_element.get_attribute("title").endswith("UTC")  # exact on hover
    browser.find_element(By.CSS_SELECTOR, "input[name=q]").send_keys("Story 7\n")  # the filter form: a plain GET
    WebDriverWait(browser, 10).until(lambda d: "q=Story+7" in d.current_url)
    assert [h.text for h in browser.find_elements(By.CSS_SELECTOR, "article.story h2")] == ["Story 7"]
    assert console_errors(browser) == []
