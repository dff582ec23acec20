"""`cai review` driven in real headless Chromium (Debian's, through its chromedriver and Selenium):
real clicks and key presses, then the dataset rebuilt from what the browser decided."""

from __future__ import annotations

import os
import shutil

from urllib.parse import quote

import pyarrow.parquet as pq
import pytest
from review_helpers import XSS, XSS_ID, decisions_in, serving

from cai.review import rebuild

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]


def _need(tool: str) -> str:
    found = shutil.which(tool)
    if not found and not os.environ.get("CI"):
        pytest.skip(f"no `{tool}` on PATH (tests/setup_chromium.sh installs Debian's; CI requires it)")
    assert found, f"Debian's {tool} is needed in CI (tests/setup_chromium.sh installs it)"
    return found


@pytest.fixture()
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _need("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,1000"):
        options.add_argument(flag)
    # The driver is given: Selenium Manager never runs, so nothing is downloaded.
    driver = webdriver.Chrome(service=Service(executable_path=_need("chromedriver")), options=options)
    driver.implicitly_wait(5)
    yield driver
    driver.quit()


@pytest.fixture()
def site(tmp_path):
    with serving(tmp_path, who="grace") as both:
        yield both


def _keys(driver, keys: str):
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(keys).perform()


def _wait_for(driver, predicate, timeout=15):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # A decision reloads the page: elements found just before the reload go stale.
    return WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException, NoSuchElementException)
                         ).until(lambda d: predicate(d))


def _decision_badge(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, ".decision [data-decision]").get_attribute("data-decision")


def test_filter_open_edit_reject_reload_and_rebuild(browser, site):
    from selenium.webdriver.common.by import By

    out, s = site
    d = browser
    d.get(s.url)
    # Filter to a flag: the facet link, then only flagged records are listed.
    d.find_element(By.CSS_SELECTOR, '[data-facet="flag"] a[data-value="empty_critique"]').click()
    _wait_for(d, lambda d: "flag=empty_critique" in d.current_url)
    listed = [e.text for e in d.find_elements(By.CSS_SELECTOR, "tr[data-item] a.open")]
    assert listed == ["r-001", "r-005", "r-009"]
    assert "of 3" in d.find_element(By.ID, "summary").text
    # Open the first one with the keyboard (Enter on the selected row), edit its chosen answer.
    _keys(d, "\n")
    _wait_for(d, lambda d: d.find_element(By.ID, "record-id").text == "r-001")
    assert "empty_critique" in d.find_element(By.ID, "flags").text
    _keys(d, "e")
    box = d.find_element(By.CSS_SELECTOR, ".decision textarea[name=chosen]")
    assert d.switch_to.active_element == box
    box.clear()
    box.send_keys("A hand-written better answer.")
    d.find_element(By.CSS_SELECTOR, ".decision input[name=note]").send_keys("rewrote it")
    d.find_element(By.CSS_SELECTOR, '.decision button[data-decide="edit"]').click()
    _wait_for(d, lambda d: _decision_badge(d) == "edit")
    # Next record in the filter (j), then reject it with the keyboard (r).
    _keys(d, "j")
    _wait_for(d, lambda d: d.find_element(By.ID, "record-id").text == "r-005")
    _keys(d, "r")
    _wait_for(d, lambda d: _decision_badge(d) == "reject")
    # Reload the list: both decisions are shown.
    d.get(s.url + "?flag=empty_critique")
    states = {e.find_element(By.CSS_SELECTOR, "a.open").text: e.find_element(By.CSS_SELECTOR, "[data-state]").text
              for e in d.find_elements(By.CSS_SELECTOR, "tr[data-item]")}
    assert states == {"r-001": "edit", "r-005": "reject", "r-009": "undecided"}
    lines = decisions_in(out)
    assert [(x["record"], x["decision"], x["who"]) for x in lines] == [("r-001", "edit", "grace"), ("r-005", "reject", "grace")]
    assert lines[0]["note"] == "rewrote it"
    # Rebuild the dataset: the edit is the chosen answer, the rejected record is gone.
    rebuild.rebuild(out)
    rows = {}
    for f in (out / "dataset").glob("*.parquet"):
        rows.update({r["id"]: r for r in pq.read_table(f).to_pylist()})
    assert rows["r-001"]["chosen"][-1]["content"] == "A hand-written better answer." and rows["r-001"]["reviewed"] == "edited"
    assert "r-005" not in rows and "r-009" not in rows  # r-009: still flagged, nobody accepted it


def test_xss_prompt_renders_as_text(browser, site):
    from selenium.webdriver.common.by import By

    _, s = site
    # The page's Content-Security-Policy would block an injected script anyway; what shows that the text
    # is escaped is the DOM: the prompt is text, and no <script> or <img> element came from it.
    page = "record?id=" + quote(XSS_ID, safe="")
    for path in (page, "?q=quotes"):
        browser.get(s.url + path)
        assert browser.execute_script("return document.querySelectorAll('img').length") == 0
        assert browser.execute_script("return document.scripts.length") == 1  # the page's own
        assert browser.execute_script("return window.__xss === undefined")
    assert XSS[:40] in browser.find_element(By.ID, "records").text
    # Opened from the list by its link, the odd id finds its record.
    browser.find_element(By.LINK_TEXT, XSS_ID).click()
    _wait_for(browser, lambda d: d.find_element(By.ID, "record-id").text == XSS_ID)
    assert browser.find_element(By.ID, "prompt").text == XSS


def test_two_tabs_deciding_the_same_record_keep_both_lines(browser, site):
    from selenium.webdriver.common.by import By

    out, s = site
    d = browser
    d.get(s.url + "record?id=r-002")
    first = d.current_window_handle
    d.switch_to.new_window("tab")
    d.get(s.url + "record?id=r-002")  # loaded before the first tab decides
    second = d.current_window_handle
    d.switch_to.window(first)
    d.find_element(By.CSS_SELECTOR, '.decision button[data-decide="accept"]').click()
    _wait_for(d, lambda d: _decision_badge(d) == "accept")
    d.switch_to.window(second)
    d.find_element(By.CSS_SELECTOR, '.decision button[data-decide="reject"]').click()
    _wait_for(d, lambda d: _decision_badge(d) == "reject")
    assert [(x["record"], x["decision"]) for x in decisions_in(out)] == [("r-002", "accept"), ("r-002", "reject")]
    d.switch_to.window(first)
    d.refresh()
    assert _decision_badge(d) == "reject"  # the later line applies
    run = rebuild.rebuild(out)
    assert run["counts"]["review"]["rejected"] == 1
    sft = {r["id"] for f in (out / "sft").glob("*.parquet") for r in pq.read_table(f).to_pylist()}
    assert "r-002" not in sft


def test_keyboard_navigation_and_principle_page(browser, site):
    from selenium.webdriver.common.by import By

    out, s = site
    d = browser
    d.get(s.url)
    ids = [e.text for e in d.find_elements(By.CSS_SELECTOR, "tr[data-item] a.open")]
    _keys(d, "jj")
    assert "selected" in d.find_elements(By.CSS_SELECTOR, "tr[data-item]")[2].get_attribute("class")
    _keys(d, "a")  # accept the selected row from the list
    _wait_for(d, lambda d: d.find_elements(By.CSS_SELECTOR, "tr[data-item] [data-state]")[2].text == "accept")
    assert decisions_in(out)[-1]["record"] == ids[2]
    _keys(d, "jj\n")
    _wait_for(d, lambda d: d.find_element(By.ID, "record-id").text == ids[2])  # the selection restarts at the top
    _keys(d, "j")
    _wait_for(d, lambda d: d.find_element(By.ID, "record-id").text == ids[3])
    _keys(d, "k")
    _wait_for(d, lambda d: d.find_element(By.ID, "record-id").text == ids[2])
    # A round's principle link leads to its page: draws, flag rate, sample revisions with word diffs.
    d.find_element(By.CSS_SELECTOR, "section.round h2 a").click()
    _wait_for(d, lambda d: d.find_elements(By.ID, "principle-id"))
    stats = d.find_element(By.ID, "principle-stats").text
    assert "rounds in" in stats and "flagged" in stats
    assert d.find_elements(By.CSS_SELECTOR, "section.sample ins")
