"""Named probe builders: `@register_probe(name, ...)` makes `--probe NAME` (and a type's
`probe="NAME"`) build a probe from the run, with `NAME:key=N,...` options checked here.

A builder is `fn(run: ProbeRun, **options) -> Probe` (or a PairProbe for patching types). The
built-in builders (`repeated_tokens`, `regression`, `regression_pool`, `icl_dynamics`) are
registered the same way, so a plugin's probe is resolved, hashed, stored with its results and
cached per request exactly like theirs.
"""

from __future__ import annotations

import dataclasses
import types as _pytypes
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from trainer.model import MODEL_HEADS, ModelConfig, model_head

__all__ = ["ProbeRun", "ProbeBuilder", "register_probe", "unregister_probe", "list_probes", "get_probe_builder",
           "split_probe_options"]



@dataclasses.dataclass(frozen=True)
class ProbeRun:
    """The run a probe is built for: its directory, its run.json content and its model config."""

    run_dir: Path
    info: Mapping[str, Any]
    config: ModelConfig

    @property
    def run_config(self) -> Mapping[str, Any]:
        """The run's training config (`task`, `seeds`, `train`, ...); empty for runs without one."""
        return self.info.get("config", {})

    @property
    def eval_seed(self) -> int:
        return int(self.run_config.get("seeds", {}).get("eval_seed", 0))


@dataclasses.dataclass(frozen=True)
class ProbeBuilder:
    name: str
    fn: Callable[..., Any]
    description: str
    options: Mapping[str, int | None]  # option name -> default (None: the builder picks one per run)
    requires: str | None  # model head the probe needs ("lm", "classifier", "regression"), None for any

    def build(self, run: ProbeRun, options: Mapping[str, int]) -> Any:
        """The probe for `run` with `options` (integers, from `NAME:key=N,...`); checked against the model."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            known = ", ".join(self.options) or "none"
            raise ValueError(f"unknown {self.name} probe option(s) {unknown}; its options are: {known}")
        if self.requires is not None and self.requires != run.config.head:
            raise ValueError(f"probe '{self.name}' needs a {model_head(self.requires).words}; this run's model "
                             f"is a {model_head(run.config.head).words}")
        if "batch" in options and options["batch"] < 1:
            raise ValueError(f"probe option batch={options['batch']} must be a positive number of sequences")
        given = {**{k: v for k, v in self.options.items() if v is not None}, **options}
        probe = self.fn(run, **given)
        probe.check(run.config)
        return probe


_BUILDERS: dict[str, ProbeBuilder] = {}


def register_probe(name: str, *, description: str, options: Mapping[str, int | None] | None = None,
                   requires: str | None = None) -> Callable[[Callable], Callable]:
    """Decorator registering `fn(run: ProbeRun, **options) -> Probe` as the probe `name`.

    `options` are the integer options `NAME:key=N` may set, with their defaults (None: the
    builder chooses, e.g. from the run's context length). `requires` is the model head the probe
    fits. Refuses a name that is already registered. Returns `fn` unchanged.
    """
    if requires is not None and requires not in MODEL_HEADS:
        raise ValueError(f"probe '{name}': requires must be one of {', '.join(MODEL_HEADS)} or None, got {requires!r}")
    if not name.isidentifier() or name.startswith("default"):
        raise ValueError(f"probe name {name!r} must be a snake_case identifier not starting with 'default'")

    def decorate(fn: Callable) -> Callable:
        if name in _BUILDERS:
            raise ValueError(f"probe '{name}' is already registered (by {_BUILDERS[name].fn.__module__}); choose "
                             "another name or unregister_probe it first")
        _BUILDERS[name] = ProbeBuilder(name, fn, description, _pytypes.MappingProxyType(dict(options or {})), requires)
        return fn

    return decorate


def unregister_probe(name: str) -> None:
    """Remove a registered probe (KeyError if there is none)."""
    del _BUILDERS[name]


def get_probe_builder(name: str) -> ProbeBuilder | None:
    return _BUILDERS.get(name)


def list_probes(head: str | None = None) -> list[ProbeBuilder]:
    """Registered probes, by name; with `head`, only those a model with that head can take."""
    return [b for _, b in sorted(_BUILDERS.items()) if head is None or b.requires in (None, head)]


def split_probe_options(text: str) -> tuple[str, dict[str, int]]:
    """`NAME:key=int,...` -> (NAME, {key: int}); ValueError naming a bad option."""
    name, _, rest = text.partition(":")
    opts: dict[str, int] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"probe option {item!r} in {text!r} must be key=value, e.g. repeated_tokens:batch=32,T=64")
        try:
            opts[key.strip()] = int(value)
        except ValueError:
            raise ValueError(f"probe option {key}={value!r} must be an integer") from None
    return name, opts
