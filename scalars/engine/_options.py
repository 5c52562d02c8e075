"""Type options from the command line: `--option TYPE.KEY=VALUE` strings -> {type: {key: value}}."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

__all__ = ["parse_type_options"]


def parse_type_options(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Parse `TYPE.KEY=VALUE` items; VALUE is JSON when it parses (1e-4, null, true), else a string.

    The option names are checked later against each type's declared options.
    """
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, eq, text = item.partition("=")
        name, dot, option = key.strip().partition(".")
        if not eq or not dot or not name or not option:
            raise ValueError(f"--option expects TYPE.KEY=VALUE, got {item!r}; e.g. --option llc.step_size=1e-4")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        out.setdefault(name, {})[option.strip()] = value
    return out
