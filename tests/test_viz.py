"""Fast tests of futurelens_tl.viz (no browser, no model)."""

from __future__ import annotations

import copy
import io
import json
import math
import re

import numpy as np
import pytest

from futurelens_tl.viz import html as H
from futurelens_tl.viz.lens_grid import (
    COLOR_MODES,
    cell_metric,
    demo_grid,
    grid_from_html,
    lens_grid_figure,
    lens_grid_html,
    validate_grid,
)


@pytest.fixture(scope="module")
def grid():
    return demo_grid(n_layers=3, n_pos=5, k=4, seed=0)


# ----------------------------------------------------------------------------- offline check


@pytest.mark.parametrize("bad", [
    '<script src="https://unpkg.com/x.js"></script>',
    "<script src='http://cdn/x.js'></script>",
    '<link href="//fonts.example/x.css" rel="stylesheet">',
    "<img src=https://x/y.png>",
    "<style>body{background:url('https://x/y.png')}</style>",
    "<style>div{background: url( //x/y.png )}</style>",
    '<style>@import "https://x/y.css";</style>',
    "<style>@import url(http://x/y.css);</style>",
    "<script>fetch('https://api.example/data')</script>",
    "<script>import('https://x/mod.js')</script>",
    '<script type="module">import { render } from "https://unpkg.com/circuitsvis/esm.js";</script>',
    '<iframe src="https://example.com"></iframe>',
    '<svg><image xlink:href="https://x/y.png"/></svg>',
])
def test_assert_offline_rejects_network_references(bad):
    with pytest.raises(H.OfflineError):
        H.assert_offline(bad)


@pytest.mark.parametrize("ok", [
    '<img src="data:image/png;base64,AAAA">',
    '<svg xmlns="http://www.w3.org/2000/svg"></svg>',
    "<p>see https://example.com for details</p>",
    '<a href="#sec-1">section</a>',
    "<script>var x = 'http://www.w3.org/2000/svg';</script>",
])
def test_assert_offline_accepts_local_content(ok):
    H.assert_offline(ok)


def test_json_script_cannot_break_out_and_hides_urls():
    data = {"t": "</script><script>alert(1)</script>", "u": 'src="https://evil/x.js"',
            "nl": "a\u2028b", "f": float("nan")}
    s = H.json_script(data, element_id="p")
    assert s.count("</script>") == 1  # only the element's own end tag
    H.assert_offline(s)
    back = H.read_json_script(s, "p")
    assert back == {**data, "f": None}


def test_to_jsonable_numpy_and_rounding():
    out = H.to_jsonable({"a": np.array([[0.123456, np.inf]]), "b": np.int64(3)}, digits=3)
    assert out == {"a": [[0.123, None]], "b": 3}
    assert json.dumps(out)
    with pytest.raises(TypeError, match="set"):
        H.to_jsonable({1, 2})


def test_visible_token():
    assert H.visible_token(" a\tb\n\r\x01") == "␣a⇥b↵␍\\x01"
    assert H.visible_token("abcdefghijk", max_len=5) == "abcd…"
    assert H.visible_token(None) == ""
    assert H.visible_token("") == "∅"
    assert H.visible_token("a\u00a0b\u200b") == "a⍽b\\u200b"


def test_unique_id_and_bad_prefix():
    ids = {H.unique_id("x") for _ in range(200)}
    assert len(ids) == 200
    with pytest.raises(ValueError, match="prefix"):
        H.unique_id("1 bad")


def test_dataframe_html_escapes_and_truncates():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"tok": ["<b>", " x"], "p": [0.123456, float("nan")]})
    out = H.dataframe_html(df, max_rows=1)
    assert "&lt;b&gt;" in out and "<b>" not in out
    assert "0.1235" in out and "1 more rows not shown" in out
    with pytest.raises(TypeError, match="DataFrame"):
        H.dataframe_html([1, 2])


def test_figure_html_is_inline_png():
    from futurelens_tl.viz.figures import heatmap

    im = heatmap(None, [[0.0, 1.0], [0.5, np.nan]], annot=[["a", "b"], ["c", ""]])
    out = H.figure_html(im.axes.figure, alt="x")
    H.assert_offline(out)
    m = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', out)
    import base64

    assert base64.b64decode(m.group(1))[:8] == b"\x89PNG\r\n\x1a\n"


def test_page_has_csp_and_save_is_atomic(tmp_path):
    doc = H.page("T <x>", "<p>body</p>")
    assert "Content-Security-Policy" in doc and "default-src &#x27;none&#x27;" in doc
    assert "<title>T &lt;x&gt;</title>" in doc
    path = H.save_html(doc, tmp_path / "sub" / "p.html")
    assert path.read_text(encoding="utf-8") == doc
    assert [p.name for p in path.parent.iterdir()] == ["p.html"]
    with pytest.raises(H.OfflineError):
        H.save_html('<script src="https://x"></script>', tmp_path / "bad.html")
    assert not (tmp_path / "bad.html").exists()


def test_asset_unknown_name():
    with pytest.raises(ValueError, match="lens_grid.js"):
        H.asset("nope.js")


# ----------------------------------------------------------------------------- grid validation


@pytest.mark.parametrize("mutate, match", [
    (lambda g: g.pop("rows"), "missing required key 'rows'"),
    (lambda g: g.pop("lenses"), "missing required key 'lenses'"),
    (lambda g: g["next_tokens"].pop(), "next_tokens"),
    (lambda g: g["row_layers"].append(9), "row_layers"),
    (lambda g: g.__setitem__("k", 0), "'k'"),
    (lambda g: g.__setitem__("lenses", []), "lenses"),
    (lambda g: g["lenses"][0].pop("kl"), r"\[0\] is missing required key 'kl'"),
    (lambda g: g["lenses"][1]["entropy"].pop(),
     r"grid\['lenses'\]\[1\]\['entropy'\] must be of length 4"),
    (lambda g: g["lenses"][0]["top_probs"][1].pop(), "top_probs"),
    (lambda g: g["lenses"][0]["top_ids"][1][2].extend([1, 2, 3, 4, 5]), "at most k=4"),
    (lambda g: g["lenses"][1].__setitem__("name", "logit"), "not unique"),
    (lambda g: g["lenses"][0]["tracked"]["probs"][0][0].pop(), "tracked"),
    (lambda g: g["lenses"][2]["cont_tokens"].pop(), "cont_tokens"),
])
def test_validate_grid_errors_name_the_key(grid, mutate, match):
    g = copy.deepcopy(grid)
    mutate(g)
    with pytest.raises(ValueError, match=match):
        validate_grid(g)


def test_validate_grid_type_and_numpy(grid):
    with pytest.raises(TypeError, match="dict"):
        validate_grid([grid])
    g = copy.deepcopy(grid)
    g["lenses"][0]["entropy"] = np.asarray(g["lenses"][0]["entropy"])
    out = validate_grid(g)
    assert isinstance(out["lenses"][0]["entropy"], list)
    assert out["lenses"][0]["entropy"] == grid["lenses"][0]["entropy"]


def test_bad_options(grid):
    with pytest.raises(ValueError, match="color='bogus'"):
        lens_grid_html(grid, color="bogus")
    with pytest.raises(ValueError, match="height"):
        lens_grid_html(grid, height=3)
    with pytest.raises(ValueError, match="lens='nope'"):
        lens_grid_figure(grid, lens="nope")
    with pytest.raises(ValueError, match="pinned"):
        lens_grid_figure(grid, color="pinned")


# ----------------------------------------------------------------------------- HTML rendering


def _payload(html_text):
    m = re.search(r'id="(fl-grid-[0-9a-f]+-data)"', html_text)
    return H.read_json_script(html_text, m.group(1))


def test_grid_html_offline_and_unique_ids(grid):
    a, b = lens_grid_html(grid), lens_grid_html(grid)
    for h in (a, b, lens_grid_html(grid, standalone=True)):
        H.assert_offline(h)
        assert "http://" not in h.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in h
    ids_a = set(re.findall(r'id="([^"]+)"', a))
    ids_b = set(re.findall(r'id="([^"]+)"', b))
    assert ids_a and not ids_a & ids_b
    # the init script addresses its own root only
    root_a = re.search(r'id="(fl-grid-[0-9a-f]+)"', a).group(1)
    assert f'getElementById("{root_a}")' in a and root_a not in b
    assert lens_grid_html(grid, standalone=True).startswith("<!DOCTYPE html>")
    assert not a.lstrip().startswith("<!DOCTYPE")


def test_grid_json_payload_round_trips(grid):
    back = grid_from_html(lens_grid_html(grid))
    assert back["tokens"] == grid["tokens"] and back["rows"] == grid["rows"]
    assert back["next_tokens"] == grid["next_tokens"]
    for lens, lb in zip(grid["lenses"], back["lenses"]):
        assert lb["name"] == lens["name"] and lb["top_ids"] == lens["top_ids"]
        assert lb["top_tokens"] == lens["top_tokens"]
        assert lb["rank_next"] == lens["rank_next"] and lb["available"] == lens["available"]
        for key in ("top_probs", "entropy", "kl", "p_next"):
            x = np.array(lens[key], dtype=object)
            y = np.array(lb[key], dtype=object)
            assert x.shape == y.shape
            for u, v in zip(x.ravel(), y.ravel()):
                if isinstance(u, list):
                    assert np.allclose(u, v, atol=5e-5) if u else v == []
                elif u is None:
                    assert v is None
                else:
                    assert abs(u - v) <= 5e-5
        assert np.allclose(lb["tracked"]["probs"], lens["tracked"]["probs"], atol=5e-5)
    # compact: every probability has at most 4 decimals
    text = lens_grid_html(grid)
    payload = re.search(r'type="application/json" id="fl-grid-[0-9a-f]+-data">(.*?)</script>',
                        text).group(1)
    assert not re.search(r"\d\.\d{5,}", payload)


def test_grid_html_cells_text_and_axes(grid):
    h = lens_grid_html(grid)
    R, P, L = len(grid["rows"]), len(grid["tokens"]), len(grid["lenses"])
    assert h.count('<td data-role="cell"') == R * P * L
    assert h.count('class="fl-na"') == P  # future lens has no embed row
    # first body row is the last layer (input at the bottom); top_down flips it
    first = re.search(r'<tbody><tr data-row="(\d+)"', h).group(1)
    assert first == str(R - 1)
    first_td = re.search(r'<tbody><tr data-row="(\d+)"', lens_grid_html(grid, top_down=True))
    assert first_td.group(1) == "0"
    # cell text = top-1 with visible whitespace
    lens = grid["lenses"][0]
    m = re.search(r'data-lens="logit" data-li="0" data-row="2" data-pos="1"[^>]*>([^<]*)</td>', h)
    assert m.group(1) == H.escape(H.visible_token(lens["top_tokens"][2][1][0], max_len=7))
    # stars on the top axis exactly where next_correct
    stars = re.findall(r'data-role="next" data-pos="(\d+)"[^>]*>[^<]*\*</th>', h)
    expected = [str(p) for p, c in enumerate(grid["next_correct"]) if c]
    assert stars[: len(expected)] == expected
    assert "free-running" in h


def test_prerendered_colours_follow_shared_scale(grid):
    h = lens_grid_html(grid, color="prob")
    lens = grid["lenses"][1]
    # find the most and least confident cells of lens 1 and check the colour ends of viridis
    flat = [(lens["top_probs"][r][p][0], r, p) for r in range(len(grid["rows"]))
            for p in range(len(grid["tokens"])) if lens["available"][r][p]]
    lo, hi = min(flat), max(flat)

    def bg(r, p):
        m = re.search(rf'data-li="1" data-row="{r}" data-pos="{p}" '
                      r'style="background:(#[0-9a-f]{6})', h)
        return m.group(1)

    from futurelens_tl.viz.lens_grid import CMAPS, _cmap_color

    assert bg(hi[1], hi[2]) == _cmap_color("viridis", hi[0])
    assert bg(lo[1], lo[2]) == _cmap_color("viridis", lo[0])
    assert _cmap_color("viridis", 0.0) == CMAPS["viridis"][0][1]
    assert _cmap_color("viridis", 1.0) == CMAPS["viridis"][-1][1]


def test_cell_metric_modes(grid):
    lens = grid["lenses"][0]
    assert cell_metric(lens, "prob", 1, 1) == lens["top_probs"][1][1][0]
    assert math.isclose(cell_metric(lens, "rank", 1, 1), math.log10(lens["rank_next"][1][1]))
    assert cell_metric(lens, "rank", 1, len(grid["tokens"]) - 1) is None  # no next token
    assert cell_metric(lens, "kl", 2, 0) == lens["kl"][2][0]
    tid = lens["top_ids"][2][3][1]
    j = lens["tracked"]["ids"].index(tid)
    assert cell_metric(lens, "pinned", 2, 3, tid) == lens["tracked"]["probs"][2][3][j]
    assert cell_metric(grid["lenses"][2], "prob", 0, 0) is None  # not covered
    assert set(COLOR_MODES) == {"prob", "rank", "kl", "entropy", "pinned"}


def test_initial_pins_and_height(grid):
    tid = grid["lenses"][0]["top_ids"][1][1][0]
    h = lens_grid_html(grid, color="pinned", pins=[tid], height=300)
    assert _payload(h)["view"]["pins"] == [tid]
    assert "max-height:300px" in h


def test_escaping_of_hostile_tokens(grid):
    g = copy.deepcopy(grid)
    g["tokens"][0] = '<img src=x onerror="alert(1)">'
    g["lenses"][0]["top_tokens"][1][0][0] = "</script><b>"
    g["title"] = "<script>alert(2)</script>"
    h = lens_grid_html(g, standalone=True)
    assert "<img src=x" not in h and "<script>alert(2)" not in h and "</script><b>" not in h
    assert grid_from_html(h)["tokens"][0] == g["tokens"][0]


# ----------------------------------------------------------------------------- static figure


def test_lens_grid_figure_png(grid):
    fig = lens_grid_figure(grid, color="rank")
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    images = [ax.images[0] for ax in axes if ax.images]
    assert len(images) == len(grid["lenses"])
    # one shared colour scale
    assert len({(im.norm.vmin, im.norm.vmax) for im in images}) == 1
    # cell text = top-1 token; row 0 (embed) drawn at the bottom (origin lower)
    texts = {(round(t.get_position()[0]), round(t.get_position()[1])): t.get_text()
             for t in axes[0].texts}
    assert texts[(1, 2)] == H.visible_token(grid["lenses"][0]["top_tokens"][2][1][0], max_len=7)
    assert images[0].origin == "lower"
    # the top axis carries the next tokens with stars
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=60)
    assert buf.getvalue()[:4] == b"\x89PNG"
    one = lens_grid_figure(grid, lens="tuned", color="kl")
    assert len([ax for ax in one.axes if ax.images]) == 1
    # masked cells for uncovered rows
    fut = lens_grid_figure(grid, lens="future (N=1)")
    arr = [ax for ax in fut.axes if ax.images][0].images[0].get_array()
    assert arr.mask[0].all() and not arr.mask[1:].any()


def test_viz_is_a_leaf_package():
    import pathlib

    root = pathlib.Path(H.__file__).parent
    for path in root.glob("*.py"):
        src = path.read_text(encoding="utf-8")
        # only the package's leaf utilities (_io: atomic writes) may be imported
        assert not re.search(r"^\s*(from|import)\s+futurelens_tl(?!\.viz|\._io\b)", src,
                             re.M), path
        assert not re.search(r"^\s*from\s+\.\.", src, re.M), path


# ----------------------------------------------------------------------------- report page


def test_report_html_toc_anchors_and_offline(grid, tmp_path):
    from futurelens_tl.viz.report import Section, report_html, write_report

    secs = [("Lens grid", lens_grid_html(grid)), Section("Grid", "<p>a</p>", level=3),
            ("Lens grid", "<p>again</p>"), Section("Heads <&>", "<p>h</p>", note="n")]
    doc = report_html("Report", secs, subtitle="sub", meta={"model": "toy"})
    H.assert_offline(doc)
    assert re.findall(r'<a href="#([^"]+)">', doc) == ["lens-grid", "grid", "lens-grid-2",
                                                        "heads"]
    assert re.findall(r'<section id="([^"]+)">', doc) == ["lens-grid", "grid", "lens-grid-2",
                                                           "heads"]
    assert "<h3>Grid</h3>" in doc and "Heads &lt;&amp;&gt;" in doc
    assert doc.count("<ol>") == 2  # nested TOC for the level-3 section
    with pytest.raises(ValueError, match="empty"):
        report_html("R", [])
    with pytest.raises(TypeError, match="sections"):
        report_html("R", ["just a string"])
    with pytest.raises(H.OfflineError):
        report_html("R", [("x", '<script src="https://cdn/x.js"></script>')])
    p = write_report(tmp_path / "r.html", "Report", secs)
    assert p.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


# ----------------------------------------------------------------------------- circuitsvis


def test_downsample_attention_pool_preserves_rows():
    from futurelens_tl.viz.circuits import downsample_attention

    rng = np.random.default_rng(0)
    a = np.tril(rng.random((3, 10, 10)))
    a /= a.sum(-1, keepdims=True)
    small, toks, names, note = downsample_attention(a, [f"t{i}" for i in range(10)],
                                                    max_tokens=4, max_heads=2, digits=6)
    assert small.shape == (2, 4, 4) and names == ["H0", "H1"]
    assert toks == ["t0…(+2)", "t3…(+2)", "t6…(+2)", "t9"]
    assert np.allclose(small.sum(-1), 1.0, atol=1e-5)
    # known answer: block (1, 0) = mean over dest 3..5 of the summed src 0..2
    want = a[0, 3:6, 0:3].sum(-1).mean()
    assert abs(small[0, 1, 0] - want) < 1e-5
    assert "pooled" in note and "first 2 of 3 heads" in note
    w, wt, _, wn = downsample_attention(a, [f"t{i}" for i in range(10)], max_tokens=4,
                                        mode="window", digits=6)
    assert np.allclose(w, a[:, 6:, 6:], atol=1e-6) and wt == ["t6", "t7", "t8", "t9"]
    assert "last 4 of 10" in wn
    with pytest.raises(ValueError, match="tokens has 3"):
        downsample_attention(a, ["a", "b", "c"])
    with pytest.raises(ValueError, match="mode"):
        downsample_attention(a, [str(i) for i in range(10)], mode="bogus")


def test_circuitsvis_embedding_is_offline():
    pytest.importorskip("circuitsvis")
    import circuitsvis.attention as cva

    from futurelens_tl.viz.circuits import attention_heads_html, circuitsvis_html

    a = np.tril(np.ones((2, 80, 80)))
    a /= a.sum(-1, keepdims=True)
    out = attention_heads_html(a, [f"t{i}" for i in range(80)], max_tokens=20)
    H.assert_offline(out)
    assert "unpkg" not in out and 'sandbox="allow-scripts"' in out and "srcdoc=" in out
    assert "pooled into 20 blocks" in out
    obj = cva.attention_heads(attention=a[:, :5, :5], tokens=list("abcde"))
    inline = circuitsvis_html(obj, iframe=False)
    assert inline == obj.local_src
    with pytest.raises(H.OfflineError):
        H.assert_offline(obj.cdn_src)  # what str(obj) / online _repr_html_ would give
    with pytest.raises(TypeError, match="local_src"):
        circuitsvis_html(str(obj))


def test_single_lens_grid_hides_diff(grid):
    g = copy.deepcopy(grid)
    g["lenses"] = g["lenses"][:1]
    h = lens_grid_html(g)
    assert "<label hidden>diff " in h
    assert "<label>diff " in lens_grid_html(grid)
    assert h.count('<td data-role="cell"') == len(g["rows"]) * len(g["tokens"])


def test_standalone_views_share_the_report_csp_and_style(tmp_path):
    """Every standalone page (report, lens grid, head grid) carries the same CSP and base CSS."""
    import torch

    from futurelens_tl.attention.heads import HeadTags
    from futurelens_tl.viz.report import report_html

    def csp(doc):
        m = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', doc)
        return m and m.group(1)

    report = report_html("r", [("a", "<p>a</p>")])
    grid_page = lens_grid_html(demo_grid(n_layers=2, n_pos=3, k=2), standalone=True)
    pages = [report, grid_page]
    tags = HeadTags(roles=["previous_token"], scores=torch.rand(1, 2, 2),
                    thresholds={"previous_token": 0.5}, threshold_sources={"previous_token": "t"},
                    stages={"previous_token": "ICI"}, evidence={"previous_token": {}})
    tags.save_html(str(tmp_path / "heads.html"))
    pages.append((tmp_path / "heads.html").read_text())
    assert csp(report) and all(csp(p) == csp(report) for p in pages)
    base = H.base_css()[:200]
    assert all(base in p for p in pages)
