"""A PNG of mean attention patterns at one checkpoint: one head large, or a layer x head grid.

One colour scale (0 to 1, attention probability) for every panel, so heads and checkpoints can
be compared. A single head labels every position with its token; a grid labels the outer axes
at a stride that keeps the ticks readable.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ._data import PatternView  # noqa: E402

CMAP = "viridis"
__all__ = ["write_pattern_png", "CMAP"]


def _ticks(ax, labels: list[str], stride: int, *, x: bool, y: bool, fontsize: float) -> None:
    pos = np.arange(0, len(labels), stride)
    if x:
        ax.set_xticks(pos, [labels[i] for i in pos], rotation=90, fontsize=fontsize)
    else:
        ax.set_xticks(pos, [])
    if y:
        ax.set_yticks(pos, [labels[i] for i in pos], fontsize=fontsize)
    else:
        ax.set_yticks(pos, [])
    ax.tick_params(length=2, pad=1)


def write_pattern_png(view: PatternView, step: int, path: str | Path, *, layer: int | None = None,
                      head: int | None = None, dpi: int = 100) -> int:
    """Write the patterns at `step` to `path` (PNG): the one head (`layer`, `head`), else a grid of
    the heads of `layer` (or of every layer, only head `head` of each); returns the panel count."""
    values = view.at(step)  # (layer, head, q, k)
    layers = range(view.n_layers) if layer is None else [layer]
    heads = range(view.n_heads) if head is None else [head]
    S = values.shape[-1]
    single = len(layers) == 1 and len(heads) == 1
    if single:
        side = float(np.clip(S * 0.15, 5.0, 15.0))
        size = (side + 1.4, side + 1.2)
        stride, fontsize = max(1, int(np.ceil(S / 100))), float(np.clip(560 / S, 5, 10))
    else:
        panel = 3.0 if S <= 48 else 3.4
        size = (panel * len(heads) + 1.4, panel * len(layers) + 1.3)
        stride, fontsize = max(1, int(np.ceil(S / 16))), 7.0
    fig, axes = plt.subplots(len(layers), len(heads), figsize=size, squeeze=False, layout="constrained")
    image = None
    for r, li in enumerate(layers):
        for c, hi in enumerate(heads):
            ax = axes[r, c]
            image = ax.imshow(values[li, hi], cmap=CMAP, vmin=0.0, vmax=1.0, interpolation="nearest", aspect="equal")
            ax.set_title(f"layer {li} head {hi}", fontsize=10 if single else 9)
            _ticks(ax, view.labels, stride, x=r == len(layers) - 1, y=c == 0, fontsize=fontsize)
    fig.supxlabel(f"key (attended to)\nlabels: {view.label_note}", fontsize=8)
    fig.supylabel("query (attending)", fontsize=8)
    fig.suptitle(f"{Path(view.run_dir).name}: mean attention pattern at step {step}", fontsize=11)
    fig.colorbar(image, ax=axes, label="attention probability", shrink=0.8, fraction=0.04, pad=0.02)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return len(layers) * len(heads)
