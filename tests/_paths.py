"""Where the repository and the committed fixtures are, for tests at any depth of `tests/`."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
