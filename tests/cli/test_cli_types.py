"""`scalars types` piped: every type on its own lines, descriptions intact (brackets are not markup)."""

from __future__ import annotations

import subprocess
import sys

import scalars


def test_types_piped_keeps_brackets_and_names_weights_only_types():
    res = subprocess.run([sys.executable, "-m", "cli.app", "types"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    heads = [ln for ln in lines if not ln.startswith("    ")]
    assert len(heads) == len(scalars.list_types())  # one header line per type, none wrapped
    text = res.stdout
    assert "A[i, i-T+1]" in text
    comp = next(ln for ln in heads if ln.startswith("composition_k "))
    assert "probe: none (weights only)" in comp and "None" not in comp
    assert all(len(ln.split("  ")) >= 3 for ln in heads)
