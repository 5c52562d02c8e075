"""Run configuration: presets, a JSON/TOML config file, and `--set key=value` overrides.

A run config is a nested dict with sections `model`, `task`, `train`, `seeds`, `checkpoints`,
`interventions`; `resolve_config` merges preset <- file <- overrides, checks every key and value
type against the preset's defaults, and validates the result by building the typed configs.
"""

from __future__ import annotations

import copy
import difflib
import json
import tomllib
from pathlib import Path
from typing import Any

from .presets import PRESETS
from .sections import CheckpointConfig, SeedConfig, TrainConfig

SECTIONS = ("model", "task", "train", "seeds", "checkpoints", "interventions")


def suggest(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def load_config_file(path: str | Path) -> dict:
    """Read a JSON or TOML run config file."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"config file '{path}' is a directory; pass a .json or .toml file")
    if not path.is_file():
        raise FileNotFoundError(f"config file '{path}' does not exist; pass an existing .json or .toml file")
    kind = "TOML" if path.suffix == ".toml" else "JSON"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"config file '{path}' is not UTF-8 text; save it as UTF-8 {kind}") from None
    try:
        loaded = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"config file '{path}' is not valid {kind}: {exc}") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"config file '{path}' holds a {type(loaded).__name__}, not a table of sections "
                         f"({', '.join(SECTIONS)}); see `scalars train --show-config`")
    return loaded


def parse_value(text: str) -> Any:
    """A `--set` value: JSON if it parses (numbers, true/false, null, lists), else the raw string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _type_ok(default: Any, value: Any) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def merge(base: dict, update: dict, *, where: str = "", strict: bool = True) -> dict:
    """Deep-merge `update` into a copy of `base`; unknown keys and wrong value types are errors."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        path = f"{where}.{key}" if where else key
        if strict and key not in out:
            raise ValueError(f"unknown config key '{path}'{suggest(key, out)}; see `scalars train --show-config`")
        current = out.get(key)
        if isinstance(current, dict) and isinstance(value, dict):
            out[key] = merge(current, value, where=path, strict=strict and path not in FREE_FORM)
        else:
            if strict and not _type_ok(current, value):
                raise ValueError(
                    f"config key '{path}' expects a {type(current).__name__}, got {value!r} ({type(value).__name__})"
                )
            out[key] = value
    return out


FREE_FORM = {"interventions"}


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    """Apply `key.path=value` strings to a config dict."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}; e.g. --set train.steps=500")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        update: dict = {}
        node = update
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = parse_value(text)
        config = merge(config, update)
    return config


def resolve_config(preset: str | None = None, config_file: str | None = None, overrides: list[str] | None = None) -> dict:
    """The effective run config: preset defaults, then the file, then `--set` overrides, validated."""
    if preset is None and config_file is None:
        preset = "induction-tiny"
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset '{preset}'{suggest(preset, PRESETS)}; known presets: {', '.join(sorted(PRESETS))}")
        config = copy.deepcopy(PRESETS[preset])
        config["preset"] = preset
    else:
        config = {"preset": None}
    if config_file is not None:
        loaded = load_config_file(config_file)
        if preset is None:
            base_name = loaded.get("preset") or "induction-tiny"
            if base_name not in PRESETS:
                raise ValueError(f"config file names unknown preset '{base_name}'; known presets: {', '.join(sorted(PRESETS))}")
            config = copy.deepcopy(PRESETS[base_name])
            config["preset"] = base_name
        loaded = {k: v for k, v in loaded.items() if k != "preset"}
        task = loaded.get("task")
        if isinstance(task, dict) and task.get("kind", config["task"].get("kind")) != config["task"].get("kind"):
            # another task kind (a mixture, a plugin's task): its section replaces the preset's whole,
            # and the task's own config dataclass supplies the defaults and refuses unknown keys
            config["task"] = copy.deepcopy(task)
            loaded.pop("task")
        config = merge(config, loaded)
    config = apply_overrides(config, overrides or [])
    validate(config)
    return config


def validate(config: dict) -> None:
    """Build every typed config once so that bad values fail now, before anything is written."""
    from .tasks import build_task  # local: tasks import jax

    TrainConfig(**config["train"])
    SeedConfig(**config["seeds"])
    CheckpointConfig(**config["checkpoints"])
    from .schedules import ScheduleSpec

    ScheduleSpec.parse(config["checkpoints"]["schedule"]).steps(config["train"]["steps"])
    build_task(config, load_data=False)
    from .interventions import parse_interventions

    parse_interventions(config.get("interventions", []), config)
