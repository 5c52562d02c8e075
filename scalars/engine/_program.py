"""The per-checkpoint compute function: every requested type for one checkpoint in one jitted program.

`make_compute_fn(types, config, probes)(params)` runs the clean forward once per probe
(vmapped over the probe batch), calls each type's function with a shared `Context` (so
ablations are reused between types and only layers >= l are re-run for an ablation in layer
l), and returns `{type name: array}`. `params` is the array part of a model
(`eqx.partition(model, eqx.is_array)[0]`); the static part is built once from `config`, so
another checkpoint of the same architecture reuses the compiled program (`trace_count`).
`make_block_compute_fn` does the same vmapped over a leading checkpoint axis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from trainer.model import ModelConfig, build_model, model_head

from ..interventions._context import Context
from ..interventions._ablation import default_head_batching
from ..probes._probe import Probe
from ..registry import DerivedScalarType, get_type, probe_name, resolve_options, type_shape

__all__ = ["ComputeFn", "make_compute_fn", "make_block_compute_fn", "select_probe", "check_types", "model_template",
           "stack_params"]

ProbeArg = Probe | Mapping[str, Probe]


def select_probe(
    dst: DerivedScalarType, config: ModelConfig, probes: ProbeArg | None,
    type_probes: Mapping[str, Probe | None] | None = None,
) -> Probe | None:
    """The probe `dst` runs on: `type_probes[dst.name]` if given there, else `probes` itself if one
    Probe, else `probes[name of the probe dst declares]`; None for weight-only types."""
    name = probe_name(dst, config)
    if name is None:
        return None
    if type_probes and dst.name in type_probes and type_probes[dst.name] is not None:
        return type_probes[dst.name]
    if isinstance(probes, Probe):
        return probes
    probes = probes or {}
    if name not in probes:
        given = ", ".join(sorted(probes)) or "none"
        raise ValueError(f"type '{dst.name}' reads probe '{name}', which was not given (given: {given}); build it "
                         "or pass one Probe to use for every type")
    return probes[name]


def check_types(types: Sequence[DerivedScalarType], config: ModelConfig) -> None:
    """ValueError for repeated types or a type whose `requires` does not match the model head."""
    names = [t.name for t in types]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"type(s) {', '.join(repeated)} requested more than once")
    for dst in types:
        if dst.requires is not None and dst.requires != config.head:
            raise ValueError(f"type '{dst.name}' needs a {model_head(dst.requires).words}, but this model is a "
                             f"{model_head(config.head).words}; drop it from the requested types")


def model_template(config: ModelConfig):
    """(param shapes, static part) of a model with `config`, without allocating weights."""
    shaped = eqx.filter_eval_shape(build_model, config)
    return eqx.partition(shaped, lambda x: isinstance(x, jax.ShapeDtypeStruct))


class ComputeFn:
    """`fn(params) -> {type name: array}` for one checkpoint (or a stack, if built as a block)."""

    def __init__(
        self,
        types: Sequence[DerivedScalarType | str],
        config: ModelConfig,
        probes: ProbeArg | None = None,
        *,
        type_probes: Mapping[str, Probe | None] | None = None,
        options: Mapping[str, Mapping[str, Any]] | None = None,
        head_batching: str = "auto",
        block: bool = False,
        checkpoint_batching: str = "auto",
    ):
        self.types = [get_type(t) for t in types]
        self.config = config
        check_types(self.types, config)
        options = dict(options or {})
        stray = sorted(set(options) - {t.name for t in self.types})
        if stray:
            raise ValueError(f"options given for type(s) {', '.join(stray)} that are not requested")
        self.options = {t.name: resolve_options(t, options.get(t.name)) for t in self.types}
        if head_batching not in ("auto", "map", "vmap"):
            raise ValueError(f"head_batching must be 'auto', 'map' or 'vmap', got {head_batching!r}")
        self.probe_for = {t.name: select_probe(t, config, probes, type_probes) for t in self.types}
        self.probes: dict[str, Probe] = {}
        for p in self.probe_for.values():
            if p is None:
                continue
            if self.probes.get(p.name, p) is not p:
                raise ValueError(f"two different probes are both named '{p.name}'; give them distinct names")
            self.probes[p.name] = p
        self._tokens = max((p.batch_size * p.seq_len for p in self.probes.values()), default=0)  # the largest probe
        self.head_batching = head_batching_for(config, self._tokens, head_batching)
        for p in self.probes.values():
            p.check(config)
        self.shapes = {t.name: type_shape(t, config, self.probe_for[t.name]) for t in self.types}
        self._param_shapes, self._static = model_template(config)
        self._probe_arrays = {  # numeric arrays go to the device once; others (strings) stay behind
            n: {k: jnp.asarray(v) for k, v in p.arrays.items() if np.asarray(v).dtype.kind in "biuf"}
            for n, p in self.probes.items()
        }
        if checkpoint_batching not in ("auto", "map", "vmap"):
            raise ValueError(f"checkpoint_batching must be 'auto', 'map' or 'vmap', got {checkpoint_batching!r}")
        self.block, self.checkpoint_batching = block, checkpoint_batching
        self.trace_count = 0
        self._jitted = jax.jit(self._block_program if block else self._program)

    def _block_program(self, stacked, probe_arrays) -> dict[str, jax.Array]:
        n = int(jax.tree_util.tree_leaves(stacked)[0].shape[0])
        how = self.checkpoint_batching
        if how == "auto":
            how = checkpoint_batching(self.config, self._tokens, n, self.head_batching)
        if how == "map":
            return jax.lax.map(lambda params: self._program(params, probe_arrays), stacked)
        return jax.vmap(self._program, in_axes=(0, None))(stacked, probe_arrays)

    def _program(self, params, probe_arrays) -> dict[str, jax.Array]:
        self.trace_count += 1
        model = eqx.combine(params, self._static)
        contexts: dict[str | None, Context] = {}
        out = {}
        for dst in self.types:
            probe = self.probe_for[dst.name]
            key = None if probe is None else probe.name
            if key not in contexts:
                if probe is None:
                    contexts[key] = Context(model, None, {}, head_batching=self.head_batching)
                else:
                    traced = probe.with_arrays(probe_arrays[probe.name])
                    clean = jax.vmap(model.call_with_all_aux)(traced.inputs)
                    contexts[key] = Context(model, traced, clean, head_batching=self.head_batching)
            ctx = contexts[key].for_type(self.options[dst.name])
            try:
                value = jnp.asarray(dst.fn(model, ctx.probe, ctx.clean, ctx), jnp.float32)
            except Exception as exc:  # a type's own failure (often a user plugin): name the type
                raise ValueError(f"type '{dst.name}' raised {type(exc).__name__}: {exc}") from None
            if value.shape != self.shapes[dst.name]:
                raise ValueError(f"type '{dst.name}' returned shape {value.shape}, but its dims {dst.dims} "
                                 f"declare {self.shapes[dst.name]} for this model and probe")
            out[dst.name] = value
        return out

    def _check_params(self, params):
        if isinstance(params, eqx.Module) and not eqx.is_array(params):
            params = eqx.filter(params, eqx.is_array)
        lead = 1 if self.block else 0
        want = jax.tree_util.tree_structure(self._param_shapes)
        if jax.tree_util.tree_structure(params) != want:
            raise ValueError("params do not have this model's structure; pass eqx.partition(model, eqx.is_array)[0] "
                             "of a model built from the same config")
        for got, ref in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(self._param_shapes)):
            if tuple(got.shape[lead:]) != tuple(ref.shape):
                raise ValueError(f"a parameter has shape {tuple(got.shape)}, the model config expects "
                                 f"{'(n_checkpoints, ) + ' if self.block else ''}{tuple(ref.shape)}")
        return params

    def __call__(self, params) -> dict[str, jax.Array]:
        return self._jitted(self._check_params(params), self._probe_arrays)

    def trace_shapes(self, param_shapes):
        """Lower the program for parameters given as ShapeDtypeStructs (validates every type, no data)."""
        return self._jitted.lower(param_shapes, self._probe_arrays)

    def lower(self, params):
        """The lowered program (for inspecting HLO or cost)."""
        return self._jitted.lower(self._check_params(params), self._probe_arrays)


VOCAB_BYTES_BUDGET = 1 << 30  # 1 GiB of vocabulary-sized activations at once


def head_batching_for(config: ModelConfig, tokens: int, head_batching: str) -> str:
    """``head_batching`` (map | vmap | auto: map on CPU, vmap on accelerators), except that auto keeps
    heads in `lax.map` when vmapping them would hold every head's (tokens, vocab) logits at once over
    `VOCAB_BYTES_BUDGET` (a 50k vocabulary: one head's re-run at a time)."""
    if head_batching != "auto":
        return head_batching
    chosen = default_head_batching()
    if chosen == "vmap" and config.n_heads * tokens * config.vocab_size * 4 > VOCAB_BYTES_BUDGET:
        return "map"
    return chosen


def checkpoint_batching(config: ModelConfig, tokens: int, n_checkpoints: int, head_batching: str) -> str:
    """How a block of checkpoints runs in one call: `vmap` (all at once), or `map` (one after another in
    one program) when vmapping would hold (checkpoints, tokens, vocab) logits (times the heads when
    heads are vmapped) over `VOCAB_BYTES_BUDGET`."""
    per = tokens * config.vocab_size * 4 * (config.n_heads if head_batching == "vmap" else 1)
    return "map" if n_checkpoints * per > VOCAB_BYTES_BUDGET else "vmap"


def make_compute_fn(
    types: Sequence[DerivedScalarType | str],
    config: ModelConfig,
    probe: ProbeArg | None = None,
    *,
    type_probes: Mapping[str, Probe | None] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    head_batching: str = "auto",
) -> ComputeFn:
    """A jitted `fn(params) -> {name: array of type_shape}` computing `types` for one checkpoint.

    `probe` is one Probe for every type, or a mapping probe name -> Probe from which each type
    takes the one it declares; `type_probes` (type name -> Probe) overrides that per type (e.g.
    a user's `--probe` file). `options` maps a type name to option overrides. `head_batching`
    is how heads of a layer are batched for ablations: "map" (lax.map), "vmap", or "auto"
    (map on CPU, vmap on accelerators).
    """
    return ComputeFn(types, config, probe, type_probes=type_probes, options=options, head_batching=head_batching)


def make_block_compute_fn(
    types: Sequence[DerivedScalarType | str],
    config: ModelConfig,
    probe: ProbeArg | None = None,
    *,
    type_probes: Mapping[str, Probe | None] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    head_batching: str = "auto",
    checkpoint_batching: str = "auto",
) -> ComputeFn:
    """As `make_compute_fn`, over a leading checkpoint axis of stacked params:
    `fn(stacked) -> {name: (n_checkpoints, *type_shape)}`. `checkpoint_batching` is how the
    checkpoints run: "vmap" (all at once), "map" (one after another in one program) or "auto"
    (map when vmapping would hold more than 1 GiB of vocabulary-sized activations)."""
    return ComputeFn(types, config, probe, type_probes=type_probes, options=options, head_batching=head_batching,
                     block=True, checkpoint_batching=checkpoint_batching)


def stack_params(models_or_params: Sequence[Any]):
    """Stack the array parts of several checkpoints along a new leading axis."""
    parts = [eqx.filter(m, eqx.is_array) for m in models_or_params]
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *parts)

