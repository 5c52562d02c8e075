"""A self-contained HTML page of a run's mean attention patterns: head selector, step slider.

Everything is inline (CSS, JS from `viewer.css` / `viewer.js` next to this module, and the data
as a JSON block), so the file opens offline and can be mailed around. Values are stored as
integers in units of 1e-4 (exact to 4 decimals, which the page shows on hover); the colour map
is matplotlib's, as in the PNG.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from pathlib import Path

import numpy as np

from ._data import TYPE, PatternView
from ._png import CMAP

SCALE = 10_000
__all__ = ["write_pattern_html", "page_data", "SCALE"]


def _colormap(n: int = 256) -> list[str]:
    import matplotlib

    cmap = matplotlib.colormaps[CMAP].resampled(n)
    return [matplotlib.colors.to_hex(cmap(i)) for i in range(n)]


def page_data(view: PatternView, *, step: int | None = None, layer: int | None = None,
              head: int | None = None) -> dict:
    """The JSON payload of the page: every computed step, every head, the initial selection."""
    ints = np.rint(np.clip(np.nan_to_num(view.values, nan=0.0), 0.0, 1.0) * SCALE).astype(np.int32)
    flat = ints.reshape(ints.shape[0], -1)
    return {
        "title": f"{TYPE} \u00b7 {Path(view.run_dir).name}",
        "run": view.run_dir, "probe": view.probe, "label_note": view.label_note, "labels": list(view.labels),
        "steps": [int(s) for s in view.steps], "n_layers": view.n_layers, "n_heads": view.n_heads,
        "seq_len": int(view.values.shape[-1]), "scale": SCALE, "colormap": _colormap(),
        "initial": {"step_index": view.step_index(step) if step is not None else len(view.steps) - 1,
                    "layer": layer or 0, "head": head or 0},
        "patterns": flat.tolist(),
    }


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def write_pattern_html(view: PatternView, path: str | Path, *, step: int | None = None, layer: int | None = None,
                       head: int | None = None) -> int:
    """Write the page to `path`, opening at (`step`, `layer`, `head`); returns its size in bytes."""
    data = page_data(view, step=step, layer=layer, head=head)
    payload = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")  # no "</script>" inside
    title = html.escape(data["title"])
    page = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
{_asset("viewer.css")}</style>
</head>
<body>
<h1>{title}</h1>
<p class="note">mean attention pattern over the probe &middot; labels: {html.escape(view.label_note)}</p>
<div class="controls">
<label for="head">head <select id="head"></select></label>
<label for="step">step <input type="range" id="step"></label><output id="step-value" for="step"></output>
<button id="play" type="button">play</button>
</div>
<div id="readout"></div>
<canvas id="pattern" aria-label="attention pattern heatmap"></canvas>
<script type="application/json" id="pattern-data">{payload}</script>
<script>
{_asset("viewer.js")}</script>
</body>
</html>
"""
    Path(path).write_text(page, encoding="utf-8")
    return len(page.encode("utf-8"))
