"""Views of stored attention patterns: a PNG of one checkpoint and an interactive HTML page over all.

`load_pattern_view(run_dir)` reads the stored `attention_pattern` variable (computing missing
checkpoints first unless told not to) with axis labels from the probe; `write_pattern_png` and
`write_pattern_html` draw it. `scalars patterns` is the command line of this module.
"""

from ._data import PatternView as PatternView
from ._data import load_pattern_view as load_pattern_view
from ._html import write_pattern_html as write_pattern_html
from ._labels import axis_labels as axis_labels
from ._png import write_pattern_png as write_pattern_png

__all__ = ["PatternView", "load_pattern_view", "write_pattern_png", "write_pattern_html", "axis_labels"]
