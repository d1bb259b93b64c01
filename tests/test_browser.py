"""Headless-Chromium test of the standalone lens grid (issue 7 browser test).

Opens the standalone HTML written by ``lens_grid_html(..., standalone=True)`` in headless
Chromium via Selenium and checks: the number of cells, hover shows the top-k table, clicking
pins a token and draws a trajectory for every lens, switching the colour mode recolours the
cells, the diff panel appears, and the page made no network request. Saves a screenshot to
``test-artifacts/lens_grid.png``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from futurelens_tl.viz.lens_grid import demo_grid, lens_grid_html

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def _need_browser():
    pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium)")
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install chromium chromium-driver)")
    if not Path(CHROMEDRIVER).exists():
        pytest.skip("chromedriver is not installed (apt-get install chromium-driver)")


@pytest.fixture(scope="module")
def driver():
    _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="fl-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic",
                 "--disable-default-apps", "--disable-extensions",
                 "--window-size=1500,1100", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    try:
        drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    except Exception as e:  # pragma: no cover - environment dependent
        shutil.rmtree(profile, ignore_errors=True)
        pytest.skip(f"cannot start headless chromium: {type(e).__name__}: {e}")
    yield drv
    drv.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _requests(drv) -> list[tuple[str, str]]:
    """(document URL, request URL) of every request the browser logged since the last call."""
    out = []
    for entry in drv.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            params = msg["params"]
            out.append((params.get("documentURL", ""), params["request"]["url"]))
    return out


def _is_remote(url: str) -> bool:
    return url.split(":", 1)[0].lower() in ("http", "https", "ws", "wss", "ftp")


def _is_browser_ui(document_url: str) -> bool:
    """Chromium's own pages (new-tab page etc.), not ours."""
    return document_url.startswith(("chrome://", "chrome-untrusted://", "devtools://"))


def _colors(drv) -> list[str]:
    return drv.execute_script(
        "return Array.from(document.querySelectorAll('[data-role=cell]:not(.fl-na)'))"
        ".map(e => getComputedStyle(e).backgroundColor);"
    )


def _prerendered_colors(html_text: str) -> dict[str, list[int] | None]:
    """Cell key 'li/row/pos' -> the background the Python pre-render gave it (None: none)."""
    import re

    out = {}
    for m in re.finditer(r'<td data-role="cell" data-lens="[^"]*" data-li="(\d+)" '
                         r'data-row="(\d+)" data-pos="(\d+)"( style="background:#(\w{6})|)',
                         html_text):
        li, r, p, _, hx = m.groups()
        if hx is None and 'class="fl-na"' in html_text[m.end(): m.end() + 20]:
            continue
        out[f"{li}/{r}/{p}"] = None if hx is None else [int(hx[i:i + 2], 16) for i in (0, 2, 4)]
    return out


def test_lens_grid_in_headless_chromium(driver, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    grid = demo_grid(n_layers=4, n_pos=6, k=5, seed=1)
    n_lenses, R, P = len(grid["lenses"]), len(grid["rows"]), len(grid["tokens"])
    assert (n_lenses, R, P) == (3, 5, 6)
    grid["tokens"][1] = grid["next_tokens"][0] = "\u00a0\tz\u200b"  # odd whitespace
    grid["tokens"][2] = ""
    path = tmp_path / "lens_grid.html"
    path.write_text(lens_grid_html(grid, standalone=True), encoding="utf-8")
    url = path.as_uri()

    driver.get("about:blank")  # leave chromium's own start page, then drop its log
    time.sleep(0.3)
    driver.get_log("performance")
    driver.get(url)
    WebDriverWait(driver, 10).until(
        lambda d: d.execute_script(
            "return !!document.querySelector('[data-fl=lens-grid][data-fl-ready]')"))
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, f"JavaScript errors: {errors}"

    # 1. one cell per lens x row x position, each lens panel with R x P cells
    cells = driver.find_elements(By.CSS_SELECTOR, "[data-role=cell]")
    assert len(cells) == n_lenses * R * P
    for lens in grid["lenses"]:
        sel = f'[data-role=cell][data-lens="{lens["name"]}"]'
        assert len(driver.find_elements(By.CSS_SELECTOR, sel)) == R * P
    # input at the bottom: the first body row of each panel is the last layer
    first_rows = driver.execute_script(
        "return Array.from(document.querySelectorAll('table.fl-gt tbody tr:first-child'))"
        ".map(tr => tr.getAttribute('data-row'));")
    assert set(first_rows) == {str(R - 1)}
    # the future lens marks itself free-running and has no embed row
    assert "free-running" in driver.find_element(
        By.CSS_SELECTOR, '[data-role=panel][data-lens="future (N=1)"]').text

    # 2. hover shows the top-k table of that lens/cell
    tip = driver.find_element(By.CSS_SELECTOR, "[data-role=tooltip]")
    assert not tip.is_displayed()
    r, p = 3, 2
    lens = grid["lenses"][1]
    cell = driver.find_element(
        By.CSS_SELECTOR, f'[data-role=cell][data-lens="{lens["name"]}"][data-row="{r}"]'
                         f'[data-pos="{p}"]')
    ActionChains(driver).move_to_element(cell).perform()
    WebDriverWait(driver, 5).until(lambda d: tip.is_displayed())
    rows = tip.find_elements(By.CSS_SELECTOR, "[data-role=topk] tr")
    assert len(rows) == grid["k"]
    shown = [e.get_attribute("data-token-id") for e in
             tip.find_elements(By.CSS_SELECTOR, "[data-role=topk] [data-role=pin-token]")]
    assert shown == [str(i) for i in lens["top_ids"][r][p]]
    assert lens["name"] in tip.text and "entropy" in tip.text and "KL" in tip.text
    assert "rank(next)" in tip.text and str(lens["rank_next"][r][p]) in tip.text
    # ... and the other lenses' top-3 at the same cell
    others = tip.find_element(By.CSS_SELECTOR, "[data-role=other-lenses]")
    other_ids = [e.get_attribute("data-token-id") for e in
                 others.find_elements(By.CSS_SELECTOR, "[data-role=pin-token]")]
    assert other_ids == [str(i) for x in (grid["lenses"][0], grid["lenses"][2])
                         for i in x["top_ids"][r][p][:3]]
    # a future-lens cell shows its free-running continuation
    fut = grid["lenses"][2]
    fcell = driver.find_element(
        By.CSS_SELECTOR, f'[data-role=cell][data-lens="{fut["name"]}"][data-row="2"]'
                         '[data-pos="1"]')
    ActionChains(driver).move_to_element(fcell).perform()
    cont = WebDriverWait(driver, 5).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "[data-role=tooltip] [data-role=continuation]"))
    assert fut["cont_tokens"][2][1][0].strip() in cont.text

    # 3. colour mode switch recolours the cells (prob -> entropy)
    before = _colors(driver)
    Select(driver.find_element(By.CSS_SELECTOR, "[data-role=color-mode]")).select_by_value(
        "entropy")
    after = _colors(driver)
    assert len(before) == len(after) and before != after
    Select(driver.find_element(By.CSS_SELECTOR, "[data-role=color-mode]")).select_by_value("prob")
    assert _colors(driver) == before

    # 3b. the page's JS colours every cell exactly as the Python pre-render does, per mode
    for mode in ("prob", "rank", "kl", "entropy"):
        expected = _prerendered_colors(lens_grid_html(grid, color=mode))
        Select(driver.find_element(By.CSS_SELECTOR, "[data-role=color-mode]")).select_by_value(
            mode)
        got = driver.execute_script(
            "return Array.from(document.querySelectorAll('[data-role=cell]:not(.fl-na)'))"
            ".map(e => [e.dataset.li + '/' + e.dataset.row + '/' + e.dataset.pos,"
            " getComputedStyle(e).backgroundColor]);")
        assert len(got) == len(expected) > 0
        for key, css in got:
            want = expected[key]
            rgb = [int(v) for v in css[css.index("(") + 1: css.index(")")].split(",")[:3]]
            if want is None:  # undefined value (e.g. rank at the last position)
                assert rgb == [0xEE, 0xF1, 0xF4], (mode, key, css)
            else:
                assert max(abs(a - b) for a, b in zip(rgb, want)) <= 1, (mode, key, css, want)
    Select(driver.find_element(By.CSS_SELECTOR, "[data-role=color-mode]")).select_by_value("prob")

    # 3c. the top-down toggle flips the rows of every panel
    driver.find_element(By.CSS_SELECTOR, "[data-role=top-down]").click()
    first_rows = driver.execute_script(
        "return Array.from(document.querySelectorAll('table.fl-gt tbody tr:first-child'))"
        ".map(tr => tr.getAttribute('data-row'));")
    assert set(first_rows) == {"0"}
    driver.find_element(By.CSS_SELECTOR, "[data-role=top-down]").click()

    # 4. click a cell: pins its top-1, trajectory path for every lens
    assert not driver.find_elements(By.CSS_SELECTOR, "[data-role=trajectory]")
    ActionChains(driver).move_to_element(cell).click().perform()
    paths = WebDriverWait(driver, 5).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "[data-role=trajectory]"))
    top1 = str(lens["top_ids"][r][p][0])
    assert sorted(e.get_attribute("data-lens") for e in paths) == sorted(
        x["name"] for x in grid["lenses"])
    assert {e.get_attribute("data-token-id") for e in paths} == {top1}
    # the logit-lens path has one vertex per row, at the tracked probabilities
    d_attr = next(e for e in paths if e.get_attribute("data-lens") == "logit").get_attribute("d")
    assert d_attr.count("M") + d_attr.count("L") == R
    # the future lens has no embed row: one vertex fewer
    d_fut = next(e for e in paths if e.get_attribute("data-lens") == fut["name"]).get_attribute("d")
    assert d_fut.count("M") + d_fut.count("L") == R - 1
    # pin a second token from the (now frozen) hover table: two paths per lens
    second = tip.find_elements(By.CSS_SELECTOR, "[data-role=topk] [data-role=pin-token]")[1]
    second_id = second.get_attribute("data-token-id")
    second.click()
    paths = driver.find_elements(By.CSS_SELECTOR, "[data-role=trajectory]")
    assert len(paths) == 2 * n_lenses
    assert {e.get_attribute("data-token-id") for e in paths} == {top1, second_id}
    assert len(driver.find_elements(By.CSS_SELECTOR, "[data-role=pin-chip]")) == 2
    # log-scale toggle redraws the trajectories
    d_lin = paths[0].get_attribute("d")
    driver.find_element(By.CSS_SELECTOR, "[data-role=pin-log]").click()
    d_log = driver.find_elements(By.CSS_SELECTOR, "[data-role=trajectory]")[0].get_attribute("d")
    assert d_log != d_lin and d_log.count("L") == d_lin.count("L")
    driver.find_element(By.CSS_SELECTOR, "[data-role=pin-log]").click()
    # "pinned" colour mode colours by the active (last) pin
    Select(driver.find_element(By.CSS_SELECTOR, "[data-role=color-mode]")).select_by_value(
        "pinned")
    pinned_colors = _colors(driver)
    assert pinned_colors != before

    # 5. diff mode: lens A - lens B panel with R x P diff cells
    Select(driver.find_element(By.CSS_SELECTOR, "[data-role=color-mode]")).select_by_value("prob")
    Select(driver.find_element(By.CSS_SELECTOR, "[data-role=diff-a]")).select_by_value("0")
    Select(driver.find_element(By.CSS_SELECTOR, "[data-role=diff-b]")).select_by_value("1")
    diff_cells = driver.find_elements(By.CSS_SELECTOR, "[data-role=diff-cell]")
    assert len(diff_cells) == R * P
    # the JS-built axes show tokens exactly as the Python-rendered panels do
    def axis(panel_sel, role):
        return driver.execute_script(
            "return Array.from(document.querySelectorAll(arguments[0]))"
            ".map(e => e.textContent);", f"{panel_sel} th[data-role={role}]")
    for role in ("input", "next"):
        assert axis("[data-role=diff-panel]", role) == axis('[data-role=panel][data-li="0"]', role)
    assert axis("[data-role=diff-panel]", "input")[1:3] == ["⍽⇥z\\u2…", "∅"]  # truncated
    a, b = grid["lenses"][0]["top_probs"][r][p][0], grid["lenses"][1]["top_probs"][r][p][0]
    dcell = driver.find_element(By.CSS_SELECTOR, f'[data-role=diff-cell][data-row="{r}"]'
                                                 f'[data-pos="{p}"]')
    shown_diff = float(dcell.text.replace("\u2212", "-"))
    assert abs(shown_diff - (a - b)) < 0.006

    # re-select the cell so the screenshot shows the tooltip and trajectories
    driver.execute_script("window.scrollTo(0, 0)")
    ActionChains(driver).move_to_element(cell).perform()
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "lens_grid.png"
    driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000

    # 6. no network request at all: only the file:// page itself (and data: URLs)
    requests = _requests(driver)
    assert any(u == url for _, u in requests), "performance log did not record the page load"
    ours = [u for doc, u in requests if doc == url or u == url]
    bad = [u for u in ours if not (u.startswith("data:") or u == url)]
    assert not bad, f"the page made network requests: {bad}"
    remote = [u for doc, u in requests if _is_remote(u) and not _is_browser_ui(doc)]
    assert not remote, f"network requests made while the page was open: {remote}"
    assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0


def test_two_grids_on_one_page_are_independent(driver, tmp_path):
    from selenium.webdriver.common.by import By

    from futurelens_tl.viz.html import page

    g1 = demo_grid(n_layers=2, n_pos=3, k=3, seed=2)
    g2 = demo_grid(n_layers=3, n_pos=4, k=3, seed=3)
    doc = page("two grids", lens_grid_html(g1) + lens_grid_html(g2))
    path = tmp_path / "two.html"
    path.write_text(doc, encoding="utf-8")
    driver.get(path.as_uri())
    roots = driver.find_elements(By.CSS_SELECTOR, "[data-fl=lens-grid]")
    assert len(roots) == 2
    assert all(r.get_attribute("data-fl-ready") == "1" for r in roots)
    assert len(roots[0].find_elements(By.CSS_SELECTOR, "[data-role=cell]")) == 3 * 3 * 3
    assert len(roots[1].find_elements(By.CSS_SELECTOR, "[data-role=cell]")) == 3 * 4 * 4
    # clicking a cell of the second grid pins only there
    roots[1].find_element(By.CSS_SELECTOR, "[data-role=cell]").click()
    assert len(roots[1].find_elements(By.CSS_SELECTOR, "[data-role=trajectory]")) >= 1
    assert not roots[0].find_elements(By.CSS_SELECTOR, "[data-role=trajectory]")


def test_report_with_circuitsvis_renders_offline(driver, tmp_path):
    pytest.importorskip("circuitsvis")
    import numpy as np
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from futurelens_tl.viz.circuits import attention_heads_html
    from futurelens_tl.viz.report import write_report

    a = np.tril(np.random.default_rng(0).random((3, 8, 8)))
    a /= a.sum(-1, keepdims=True)
    path = write_report(tmp_path / "report.html", "report", [
        ("Lens grid", lens_grid_html(demo_grid(n_layers=2, n_pos=4, k=3))),
        ("Attention", attention_heads_html(a, [f"t{i}" for i in range(8)])),
    ])
    url = path.as_uri()
    driver.get("about:blank")
    time.sleep(0.3)
    driver.get_log("performance")
    driver.get(url)
    WebDriverWait(driver, 10).until(lambda d: d.execute_script(
        "return !!document.querySelector('[data-fl=lens-grid][data-fl-ready]')"))
    # the grid's inline script runs under the page's Content-Security-Policy
    assert len(driver.find_elements(By.CSS_SELECTOR, "[data-role=cell]")) == 3 * 3 * 4
    frame = driver.find_element(By.CSS_SELECTOR, "iframe[data-role=circuitsvis]")
    driver.switch_to.frame(frame)
    try:
        WebDriverWait(driver, 10).until(
            lambda d: "H2" in d.find_element(By.TAG_NAME, "body").text)
    finally:
        driver.switch_to.default_content()
    requests = _requests(driver)
    ours = [u for doc, u in requests if not _is_browser_ui(doc)]
    remote = [u for u in ours if not u.startswith(("data:", "file:", "about:"))]
    assert not remote, f"network requests made: {remote}"


def test_fragment_inserted_like_jupyterlab_output(driver, tmp_path):
    """JupyterLab/VS Code insert text/html output via innerHTML, then re-create each <script>
    so it runs (innerHTML alone never runs scripts). Two outputs in one page must both work."""
    from selenium.webdriver.common.by import By

    from futurelens_tl.viz.html import json_script, page, script_tag

    outputs = [lens_grid_html(demo_grid(n_layers=2, n_pos=3, k=3, seed=s)) for s in (4, 5)]
    loader = """
    var outs = JSON.parse(document.getElementById('outs').textContent);
    outs.forEach(function (h) {
      var area = document.createElement('div'); area.className = 'jp-OutputArea-output';
      document.body.appendChild(area);
      area.innerHTML = h;
      Array.from(area.querySelectorAll('script')).forEach(function (old) {
        var s = document.createElement('script');
        Array.from(old.attributes).forEach(function (a) { s.setAttribute(a.name, a.value); });
        s.textContent = old.textContent;
        old.parentNode.replaceChild(s, old);
      });
    });"""
    doc = page("jupyter-like", json_script(outputs, element_id="outs") + script_tag(loader))
    path = tmp_path / "jl.html"
    path.write_text(doc, encoding="utf-8")
    driver.get(path.as_uri())
    roots = driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output [data-fl=lens-grid]")
    assert len(roots) == 2
    assert [r.get_attribute("data-fl-ready") for r in roots] == ["1", "1"]
    cells = roots[1].find_elements(By.CSS_SELECTOR, "[data-role=cell]")
    assert len(cells) == 3 * 3 * 3
    cells[0].click()
    assert roots[1].find_elements(By.CSS_SELECTOR, "[data-role=trajectory]")
    assert not roots[0].find_elements(By.CSS_SELECTOR, "[data-role=trajectory]")


def test_network_check_catches_a_remote_reference(driver, tmp_path):
    """Negative control: the request log does see a page that loads something remote."""
    path = tmp_path / "remote.html"
    # port 9 on localhost (discard): fails at once, never leaves the machine
    path.write_text('<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/x.png">'
                    "</body></html>", encoding="utf-8")
    driver.get("about:blank")
    time.sleep(0.3)
    driver.get_log("performance")
    driver.get(path.as_uri())
    time.sleep(0.3)
    urls = [u for _, u in _requests(driver)]
    assert "http://127.0.0.1:9/x.png" in urls and any(_is_remote(u) for u in urls)


@pytest.fixture(scope="module")
def toy_report(tmp_path_factory):
    """A real report of the toy model (small budgets; the page is what is tested)."""
    from futurelens_tl.report import ReportConfig, build_report

    out = tmp_path_factory.mktemp("report") / "rep"
    return build_report(ReportConfig(out=out, stages=["lenses", "layer0", "heads"],
                                     tuned_tokens=2048, eval_windows=4, verbose=False,
                                     roles=["previous_token", "induction"]))


@pytest.mark.slow
def test_report_page_in_headless_chromium_at_1400px(driver, toy_report):
    from selenium.webdriver.support.ui import WebDriverWait

    driver.set_window_size(1400, 1000)
    driver.get("about:blank")
    driver.get_log("browser")
    driver.get_log("performance")
    driver.get(toy_report.index.as_uri())
    WebDriverWait(driver, 20).until(lambda d: d.execute_script(
        "const g = document.querySelectorAll('[data-fl=lens-grid]');"
        "return g.length > 0 && [...g].every(x => x.hasAttribute('data-fl-ready'))"))
    errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    assert not errors, f"console errors: {errors}"
    geometry = driver.execute_script("""
        const vw = document.documentElement.clientWidth;
        const grids = [...document.querySelectorAll('[data-fl=lens-grid]')];
        return {vw: vw, page: document.documentElement.scrollWidth,
                grids: grids.map(g => {
                    const r = g.getBoundingClientRect();
                    const box = g.parentElement.getBoundingClientRect();
                    return {right: r.right, left: r.left, parent_right: box.right};
                })};""")
    assert geometry["page"] <= geometry["vw"], f"the page scrolls sideways: {geometry}"
    for g in geometry["grids"]:
        assert g["left"] >= 0 and g["right"] <= geometry["vw"] + 0.5, geometry
        assert g["right"] <= g["parent_right"] + 0.5, geometry
    remote = [u for doc, u in _requests(driver) if not _is_browser_ui(doc)
              and _is_remote(u)]
    assert not remote, f"network requests made: {remote}"
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / "report_1400px.png"))
