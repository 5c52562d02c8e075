"""Tests marked big_memory run one at a time across xdist workers (the lock in tests/conftest.py);
unmarked tests still run side by side. Checked on two-worker runs of sleeping tests; slow, as the
big_memory tests it serves are."""

import os
import subprocess
import sys

import pytest

from tests._paths import ROOT

SLEEPER = """
import os, time
import pytest

def _record(name):
    start = time.time()
    time.sleep(2)
    with open(os.environ["INTERVALS"], "a") as f:
        f.write(f"{name} {os.environ['PYTEST_XDIST_WORKER']} {start} {time.time()}\\n")
"""


def _intervals(tmp_path, marked: bool) -> dict[str, tuple[str, float, float]]:
    """(worker, start, end) of tests a and b, each in its own file, run on two workers."""
    tmp_path.mkdir()
    mark = "@pytest.mark.big_memory\n" if marked else ""
    for name in ("a", "b"):
        body = SLEEPER + f"\n{mark}def test_{name}():\n    _record({name!r})\n"
        (tmp_path / f"test_{name}.py").write_text(body)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadfile", "-p", "tests.conftest",
                          "-p", "no:cacheprovider", "-W", "ignore::pytest.PytestUnknownMarkWarning",
                          "--basetemp", str(tmp_path / "base"), "--rootdir", str(tmp_path), str(tmp_path)],
                         cwd=ROOT, env={**os.environ, "INTERVALS": str(tmp_path / "intervals")}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    rows = [line.split() for line in (tmp_path / "intervals").read_text().splitlines()]
    return {name: (worker, float(start), float(end)) for name, worker, start, end in rows}


@pytest.mark.slow
def test_big_memory_tests_never_overlap_and_other_tests_do(tmp_path):
    marked = _intervals(tmp_path / "marked", marked=True)
    (wa, sa, ea), (wb, sb, eb) = marked["a"], marked["b"]
    assert wa != wb, "the two files ran on one worker: the check needs them on two"
    assert ea <= sb or eb <= sa, f"big_memory tests overlapped: {marked}"
    plain = _intervals(tmp_path / "plain", marked=False)
    (wa, sa, ea), (wb, sb, eb) = plain["a"], plain["b"]
    assert wa != wb and sa < eb and sb < ea, f"unmarked tests did not run side by side: {plain}"
