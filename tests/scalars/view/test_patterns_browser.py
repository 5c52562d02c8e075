"""The HTML page of `scalars patterns` in headless Chromium: no console errors, controls, the picture follows them.

Needs Playwright (the `dev` extra) and Debian's `chromium`; `.ci/run` installs chromium and sets
DS_REQUIRE_BROWSER=1 so that CI fails instead of skipping when either is missing.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from scalars.view import PatternView, write_pattern_html

S, LAYERS, HEADS = 9, 2, 3
STEPS = [0, 100, 200]


def _browser_or_skip():
    why = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        why, sync_playwright = "playwright is not installed (pip install -e '.[dev]')", None
    exe = os.environ.get("DS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is not None and not os.access(exe, os.X_OK):
        exe = None
    if why is None and exe is None:
        why = "no chromium executable (apt-get install chromium, or set DS_CHROMIUM)"
    if why is not None:
        if os.environ.get("DS_REQUIRE_BROWSER"):
            pytest.fail(f"the browser test cannot run: {why}")
        pytest.skip(why)
    return sync_playwright, exe


def _planted_view() -> PatternView:
    """Step 0 uniform over the causal prefix, step 100 previous-token, step 200 all on BOS; head h of
    layer l at step 100 looks back 1 + (l * HEADS + h) % 2 positions."""
    q = np.arange(S)
    uniform = np.tril(np.ones((S, S))) / (q[:, None] + 1)
    values = np.zeros((len(STEPS), LAYERS, HEADS, S, S), np.float32)
    values[0] = uniform
    for layer in range(LAYERS):
        for head in range(HEADS):
            back = 1 + (layer * HEADS + head) % 2
            values[1, layer, head, q, np.maximum(q - back, 0)] = 1.0
    values[2, :, :, :, 0] = 1.0
    labels = ["BOS"] + [str(t) for t in (5, 9, 2, 7, 5, 9, 2, 7)]
    return PatternView("runs/planted", np.array(STEPS), values, labels, "planted tokens", "planted")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    sync_playwright, exe = _browser_or_skip()
    path = tmp_path_factory.mktemp("html") / "p.html"
    write_pattern_html(_planted_view(), path, step=0, layer=0, head=0)
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        pg = browser.new_page(viewport={"width": 900, "height": 700})
        pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.route("**/*", lambda route: route.abort() if not route.request.url.startswith("file:") else route.continue_())
        pg.goto(path.as_uri())
        try:
            pg.wait_for_selector("#pattern[data-step]", timeout=5000)  # drawn once
        except Exception:  # noqa: BLE001 - say why instead of a bare timeout
            browser.close()
            pytest.fail(f"the page never drew its pattern; console errors: {errors}")
        yield pg, errors
        browser.close()


def _pixels(pg) -> str:
    return pg.evaluate("document.getElementById('pattern').toDataURL()")


def _cell_rgb(pg, q: int, k: int) -> list[int]:
    return pg.evaluate("""([q, k]) => {
        const c = document.getElementById('pattern'), d = c.dataset, r = window.devicePixelRatio || 1;
        const x = (Number(d.left) + (k + 0.5) * Number(d.cell)) * r, y = (Number(d.top) + (q + 0.5) * Number(d.cell)) * r;
        return Array.from(c.getContext('2d').getImageData(Math.floor(x), Math.floor(y), 1, 1).data.slice(0, 3));
    }""", [q, k])


def _hex(rgb: list[int]) -> str:
    return "#" + "".join(f"{v:02x}" for v in rgb)


def test_page_has_controls_and_no_console_errors(page):
    pg, errors = page
    assert pg.locator("#head option").count() == LAYERS * HEADS
    assert pg.locator("#head option").nth(4).inner_text() == "layer 1 head 1"
    slider = pg.locator("#step")
    assert slider.get_attribute("type") == "range"
    assert (slider.evaluate("s => [s.min, s.max, s.value]")) == ["0", str(len(STEPS) - 1), "0"]
    assert pg.locator("#step-value").inner_text() == "0"
    assert errors == []


def test_moving_the_slider_and_the_head_changes_the_picture(page):
    pg, errors = page
    colormap = pg.evaluate("JSON.parse(document.getElementById('pattern-data').textContent).colormap")
    before = _pixels(pg)
    assert _hex(_cell_rgb(pg, 3, 3)) == colormap[round(0.25 * 255)]  # uniform: 1/4 on row 3
    pg.locator("#step").fill("1")  # sets the value and fires `input`, as dragging does
    assert pg.locator("#pattern").get_attribute("data-step") == "100" and pg.locator("#step-value").inner_text() == "100"
    after = _pixels(pg)
    assert after != before
    assert _hex(_cell_rgb(pg, 3, 2)) == colormap[-1] and _hex(_cell_rgb(pg, 3, 3)) == colormap[0]  # previous token
    pg.locator("#head").select_option(label="layer 0 head 1")  # looks back two positions
    assert pg.locator("#pattern").get_attribute("data-head") == "1" and _pixels(pg) != after
    assert _hex(_cell_rgb(pg, 3, 1)) == colormap[-1] and _hex(_cell_rgb(pg, 3, 2)) == colormap[0]
    pg.locator("#step").focus()  # the keyboard drives the slider too
    pg.keyboard.press("ArrowRight")
    assert pg.locator("#pattern").get_attribute("data-step") == "200" and _hex(_cell_rgb(pg, 5, 0)) == colormap[-1]
    assert errors == []


def test_hover_reads_out_the_cell(page):
    pg, _ = page
    pg.locator("#step").fill("1")
    pg.locator("#head").select_option(label="layer 0 head 0")
    left, top, cell = (float(pg.locator("#pattern").get_attribute(f"data-{k}")) for k in ("left", "top", "cell"))
    pg.locator("#pattern").hover(position={"x": left + 2.5 * cell, "y": top + 3.5 * cell})
    assert pg.locator("#readout").inner_text() == "query 3 \u201c2\u201d \u2192 key 2 \u201c9\u201d: 1.0000"
