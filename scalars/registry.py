"""The derived-scalar type (DST) registry: one decorated function declares a type in one place.

```python
@register("induction_score", dims=("layer", "head"), probe="repeated_tokens",
          description="mean over i in [T+1, 2T] of A[i, i-T+1]", units="attention probability")
def induction_score(model, probe, clean, ctx) -> Float[Array, "layer head"]: ...
```

`fn(model, probe, clean, ctx)` gets the model, the probe (arrays traced under jit), the clean
activations of the probe batch (`call_with_all_aux` vmapped: every leaf has a leading batch
axis) and a `Context` with the intervention helpers and the type's resolved `ctx.options`. It
returns an array of shape `type_shape(dst, config)`. Users add types from their own files
(`load_plugin(path)`) or packages (entry-point group `derived_scalars.types`).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import hashlib
import inspect
import marshal
import textwrap
import importlib.metadata
import importlib.util
import re
import sys
import types as _pytypes
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trainer.metric_info import METRIC_PREFIXES
from trainer.model import MODEL_HEADS, model_head

from .probes._input_kinds import input_kind_for_head
from .dims import TYPE_DIMS, dim_coords, dim_size

if TYPE_CHECKING:
    from trainer.model import ModelConfig

    from .probes._probe import Probe

__all__ = [
    "DerivedScalarType", "register", "unregister", "get_type", "list_types", "load_plugin",
    "load_entry_point_plugins", "type_shape", "type_coords", "resolve_options", "probe_name",
    "ENTRY_POINT_GROUP", "DEFAULT_ROLES", "type_attrs", "TYPE_SETS", "expand_type_names",
]

ENTRY_POINT_GROUP = "derived_scalars.types"
# the probe roles a type can declare instead of a probe name: the run's default probe, its
# paired probe (patching types) and its training distribution (SGLD estimators); each model
# head's input kind names its probes for them (`InputKind.default`), a run's task may override
DEFAULT_ROLES = ("default", "default_pair", "default_train")
_SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")


@dataclasses.dataclass(frozen=True, eq=False)
class DerivedScalarType:
    """A registered type: its math (`fn`) and everything the engine and the store need to know.

    `probe` names the probe the type reads (`"default"`: the run's default probe for its head,
    see `DEFAULT_ROLES`; None: a weight-only type that needs no forward). `requires` is the
    model head it needs ("lm", "classifier", "regression" or None for any). `options` are the
    type's own settings with their defaults; `sizes` gives lengths of dims the engine cannot size
    itself. `opt_in` types (costly estimators such as SGLD) are computed only when named, never by
    `--all`. `check(step, value, options)` may return one sentence about a computed cell (e.g. why
    it is NaN); the engine reports it as a warning. `validate(options, probe)` raises ValueError for
    bad option values when the request is planned, before anything is computed or stored.
    """

    name: str
    fn: Callable[..., Any]
    dims: tuple[str, ...]
    description: str
    probe: str | None = "default"
    units: str = ""
    version: int = 1
    requires: str | None = None
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    sizes: Mapping[str, int] = dataclasses.field(default_factory=dict)
    opt_in: bool = False
    check: Callable[[int, Any, Mapping[str, Any]], str | None] | None = None
    validate: Callable[[Mapping[str, Any], Any], None] | None = None
    fingerprint: str | None = None  # of fn's code; None where `version` alone names the definition
    nan_means: str = ""  # why a computed cell can be NaN (stored in attrs, printed by `scalars show`)

    def __repr__(self) -> str:
        return f"DerivedScalarType({self.name!r}, dims={self.dims}, probe={self.probe!r})"


_REGISTRY: dict[str, DerivedScalarType] = {}
_LOADED_PLUGINS: dict[str, list[str]] = {}  # resolved plugin path -> names it registered
_LOADED_ENTRY_POINTS: dict[str, list[str]] = {}


def _validate(dst: DerivedScalarType) -> None:
    name = dst.name
    if not isinstance(name, str) or not _SNAKE.match(name):
        raise ValueError(f"derived-scalar type name {name!r} must be snake_case (e.g. 'my_score')")
    if name.startswith(METRIC_PREFIXES):
        raise ValueError(f"derived-scalar type name {name!r} starts with {name.split('_')[0]}_, which is kept for "
                         "training metrics (so a metric and a scalar never share a name); choose another name")
    if not callable(dst.fn):
        raise TypeError(f"type '{name}': fn must be callable, got {type(dst.fn).__name__}")
    if len(set(dst.dims)) != len(dst.dims):
        raise ValueError(f"type '{name}' has repeated dims {dst.dims}; dims must be distinct")
    for d in dst.dims:
        if d not in TYPE_DIMS and d not in dst.sizes:
            raise ValueError(
                f"type '{name}' has unknown dim {d!r}; use one of {', '.join(TYPE_DIMS)} "
                f"(or give its size with sizes={{{d!r}: N}})"
            )
    if dst.requires is not None and dst.requires not in MODEL_HEADS:
        raise ValueError(f"type '{name}': requires must be None or a model head ({', '.join(MODEL_HEADS)}), "
                         f"got {dst.requires!r}")
    if dst.probe is not None and (not isinstance(dst.probe, str) or not dst.probe):
        raise ValueError(f"type '{name}': probe must be a probe name, 'default' or None, got {dst.probe!r}")
    if not isinstance(dst.version, int) or dst.version < 1:
        raise ValueError(f"type '{name}': version must be a positive integer, got {dst.version!r}")


def register(
    name: str,
    *,
    dims: tuple[str, ...] | list[str],
    description: str,
    probe: str | None = "default",
    units: str = "",
    version: int | None = None,
    requires: str | None = None,
    options: Mapping[str, Any] | None = None,
    sizes: Mapping[str, int] | None = None,
    opt_in: bool = False,
    check: Callable[[int, Any, Mapping[str, Any]], str | None] | None = None,
    validate: Callable[[Mapping[str, Any], Any], None] | None = None,
    nan_means: str = "",
) -> Callable[[Callable], Callable]:
    """Decorator registering `fn(model, probe, clean, ctx) -> array` as the type `name`.

    Without `version`, the type's definition is the fingerprint of `fn`'s code (comments and layout
    aside): edit the code and its stored cells are refused until recomputed with --force. An
    explicit `version` (raise it when the meaning changes) names the definition instead, so code
    edits that keep the meaning keep the stored cells. The built-in types are versioned that way.
    `nan_means` says why a computed cell can be NaN (e.g. a normalised effect whose denominator is
    too small); it is stored with the results and printed by `scalars show`.
    Refuses a name that is already registered (unregister it first to replace it).
    Returns the function unchanged; the type is `get_type(name)`.
    """

    def decorate(fn: Callable) -> Callable:
        versioned = version is not None or _is_builtin(fn)
        dst = DerivedScalarType(
            name=name, fn=fn, dims=tuple(dims), description=description, probe=probe, units=units,
            version=1 if version is None else version, requires=requires,
            options=_pytypes.MappingProxyType(dict(options or {})),
            sizes=_pytypes.MappingProxyType(dict(sizes or {})), opt_in=bool(opt_in), check=check,
            validate=validate, fingerprint=None if versioned else code_fingerprint(fn), nan_means=nan_means,
        )
        _validate(dst)
        if name in _REGISTRY:
            where = getattr(_REGISTRY[name].fn, "__module__", "?")
            raise ValueError(
                f"derived-scalar type '{name}' is already registered (by {where}); choose another name "
                "or unregister the old one first"
            )
        _REGISTRY[name] = dst
        return fn

    return decorate


# named sets of types, usable wherever a type name is (`scalars compute RUN --type standard`)
TYPE_SETS: dict[str, tuple[str, ...]] = {
    "standard": ("induction_score", "prev_token_score", "duplicate_token_score", "ablated_loss", "loss"),
}


def expand_type_names(names: Sequence[str]) -> list[str]:
    """`names` with each set name (see TYPE_SETS) replaced by its types, in order, each type once."""
    out: list[str] = []
    for name in names:
        for n in TYPE_SETS.get(name, (name,)):
            if n not in out:
                out.append(n)
    return out


def unregister(name: str) -> DerivedScalarType:
    """Remove a type from the registry and return it (KeyError with suggestions if unknown)."""
    dst = get_type(name)
    del _REGISTRY[name]
    return dst


def _unknown(name: str) -> KeyError:
    close = difflib.get_close_matches(str(name), list(_REGISTRY), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return KeyError(f"unknown derived-scalar type {name!r}{hint} (`scalars types` lists them all)")


def get_type(name: str | DerivedScalarType) -> DerivedScalarType:
    """The registered type called `name` (a type passes through); KeyError naming the nearest names."""
    if isinstance(name, DerivedScalarType):
        return name
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise _unknown(name) from None


def list_types() -> list[DerivedScalarType]:
    """Every registered type, sorted by name."""
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]


def _is_builtin(fn: Callable) -> bool:
    """A type defined in this package: versioned by its `version` (and the engine's), not its code."""
    return str(getattr(fn, "__module__", "")).split(".")[0] == __name__.split(".")[0]


def code_fingerprint(fn: Callable) -> str:
    """16 hex digits identifying `fn`'s code: its syntax tree without decorators (so comments,
    layout and the registration's description do not count), or its bytecode where the source
    cannot be read. Helpers that `fn` calls are not covered: give those types a `version`."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                node.decorator_list = []
                break
        text = ast.dump(tree, annotate_fields=False).encode()
    except (OSError, TypeError, SyntaxError):
        code = getattr(fn, "__code__", None)
        text = marshal.dumps(code) if code is not None else repr(fn).encode()
    return hashlib.sha256(text).hexdigest()[:16]


def resolve_default_probe(name: str, head: str) -> str | None:
    """`name` with a role of `DEFAULT_ROLES` replaced by the probe of that role for a model `head`
    (its input kind's); None where the kind has no probe of the role (no paired probe for
    regression); other names unchanged."""
    return input_kind_for_head(head).default(name) if name in DEFAULT_ROLES else name


def probe_name(dst: DerivedScalarType, config: "ModelConfig") -> str | None:
    """The probe `dst` reads for a model with this config (None for weight-only types)."""
    if dst.probe is None:
        return None
    name = resolve_default_probe(dst.probe, config.head)
    if name is None:
        raise ValueError(f"type '{dst.name}' reads a paired probe, and a {model_head(config.head).words} has none")
    return name


def resolve_options(dst: DerivedScalarType, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The type's option defaults updated by `overrides`; unknown option names raise ValueError."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(dst.options))
    if unknown:
        known = ", ".join(sorted(dst.options)) or "none"
        raise ValueError(f"type '{dst.name}' has no option(s) {', '.join(unknown)}; its options are: {known}")
    return {**dst.options, **overrides}


def type_shape(dst: DerivedScalarType | str, config: "ModelConfig", probe: "Probe | None" = None) -> tuple[int, ...]:
    """The output shape of one checkpoint's value of `dst` (dims in order, `step` excluded)."""
    dst = get_type(dst)
    return tuple(dim_size(d, config, probe, dst.sizes) for d in dst.dims)


def type_coords(dst: DerivedScalarType | str, config: "ModelConfig", probe: "Probe | None" = None) -> dict[str, np.ndarray]:
    """Coordinates (`arange(size)`) of each of the type's dims."""
    dst = get_type(dst)
    return {d: dim_coords(d, config, probe, dst.sizes) for d in dst.dims}


def type_attrs(dst: DerivedScalarType | str, probe: "Probe | None" = None,
               options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """JSON-able attrs stored with a type's results: definition, units, version, probe and its hash,
    resolved options."""
    dst = get_type(dst)
    return {
        "description": dst.description, "units": dst.units, "version": dst.version,
        "probe": None if probe is None else probe.name,
        "probe_hash": None if probe is None else probe.content_hash,
        "options": resolve_options(dst, options),
    }


def _module_name(path: Path) -> str:
    stem = re.sub(r"\W", "_", path.stem)
    return f"_derived_scalars_plugin_{stem}_{abs(hash(str(path))) % 10**8}"


def load_plugin(path: str | Path) -> list[str]:
    """Import the Python file at `path`, whose `@register` calls add types; return their names.

    Loading the same file again returns the names it registered without re-running it. If the
    file raises, the types it registered so far are removed and a ValueError says what it raised.
    """
    path = Path(path).expanduser()
    key = str(path.resolve())
    if key in _LOADED_PLUGINS:
        return list(_LOADED_PLUGINS[key])
    if not path.is_file():
        raise ValueError(f"plugin file {str(path)!r} does not exist; pass the path of a .py file that registers types")
    if path.suffix != ".py":
        raise ValueError(f"plugin {str(path)!r} is not a .py file")
    before = set(_REGISTRY)
    mod_name = _module_name(path)
    spec = importlib.util.spec_from_file_location(mod_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - any error in user code becomes one clear sentence
        for name in set(_REGISTRY) - before:
            del _REGISTRY[name]
        sys.modules.pop(mod_name, None)
        what = f"called sys.exit({e.code!r}) while being imported" if isinstance(e, SystemExit) else \
            f"raised {type(e).__name__}: {e}"
        raise ValueError(f"plugin {str(path)!r} {what}; a plugin file should only define and register types, probes or tasks") \
            from None
    added = sorted(set(_REGISTRY) - before)
    _LOADED_PLUGINS[key] = added
    return list(added)


def load_entry_point_plugins(group: str = ENTRY_POINT_GROUP) -> list[str]:
    """Load every installed entry point of `group` (importing it registers its types); return new names.

    The entry point names a module (`my_pkg.scalar_types`) or an object in one; importing it
    runs its `@register` calls. Errors raise ValueError naming the entry point.
    """
    added: list[str] = []
    for ep in importlib.metadata.entry_points(group=group):
        key = f"{ep.name}={ep.value}"
        if key in _LOADED_ENTRY_POINTS:
            continue
        before = set(_REGISTRY)
        try:
            ep.load()
        except Exception as e:  # noqa: BLE001
            for name in set(_REGISTRY) - before:
                del _REGISTRY[name]
            raise ValueError(f"entry point {ep.name!r} ({ep.value}) of group {group!r} raised {type(e).__name__}: {e}") from e
        new = sorted(set(_REGISTRY) - before)
        _LOADED_ENTRY_POINTS[key] = new
        added += new
    return added
