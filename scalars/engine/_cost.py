"""What each derived-scalar type costs: XLA's FLOP count of its program, and time split by it.

The engine computes all requested types of a checkpoint in one fused program, so a type has no
wall time of its own. Its share is estimated from the FLOPs XLA counts when the type is lowered
alone for one checkpoint (its clean forward included; nothing is compiled or run), and a group's
measured seconds are split in proportion. `measure_first_block` gives the real figures an
estimate of a whole request needs: compile time and seconds per checkpoint on this machine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax

from ._program import ComputeFn, model_template

__all__ = ["TypeCost", "type_flops", "split_seconds", "CostEstimate", "estimate_cost", "format_estimate"]

_FLOPS: dict[tuple, float] = {}  # (type, config, probe hash, options) -> FLOPs, kept across runs


@dataclasses.dataclass(frozen=True)
class TypeCost:
    name: str
    flops: float  # per checkpoint, the type lowered alone (its clean forward included)


def type_flops(plan, names: Sequence[str]) -> dict[str, float]:
    """XLA's FLOP count per checkpoint of each of `names` lowered alone on `plan`'s model and probes
    (0 where XLA gives no count). Cached per type, architecture, probe and options."""
    shapes, _ = model_template(plan.config)
    out = {}
    for name in names:
        probe = plan.probes.get(name)
        options = (plan.options or {}).get(name) or {}
        key = (name, plan.config, None if probe is None else probe.content_hash, repr(sorted(options.items())),
               jax.default_backend())
        if key not in _FLOPS:
            fn = ComputeFn([name], plan.config, None, type_probes={name: probe},
                           options={name: options} if options else None)
            cost = fn.trace_shapes(shapes).cost_analysis() or {}
            if isinstance(cost, list):  # older jax: one dict per device
                cost = cost[0] if cost else {}
            _FLOPS[key] = max(float(cost.get("flops", 0.0)), 0.0)
        out[name] = _FLOPS[key]
    return out


def split_seconds(seconds: float, flops: Mapping[str, float]) -> dict[str, float]:
    """`seconds` split over the types in proportion to their FLOPs (evenly when XLA counts none)."""
    total = sum(flops.values())
    if total <= 0:
        return {n: seconds / len(flops) for n in flops} if flops else {}
    return {n: seconds * f / total for n, f in flops.items()}


@dataclasses.dataclass
class CostEstimate:
    """What a request will cost, before it runs (see `estimate_cost`)."""

    run_dir: Any
    cells: int
    checkpoints: int
    flops: dict[str, float]  # type -> FLOPs per checkpoint, alone
    compile_seconds: float | None = None  # measured on the first checkpoint block, when asked
    seconds_per_checkpoint: float | None = None

    @property
    def seconds(self) -> float | None:
        if self.seconds_per_checkpoint is None:
            return None
        return (self.compile_seconds or 0.0) + self.seconds_per_checkpoint * self.checkpoints


def estimate_cost(plan) -> CostEstimate:
    """FLOPs per type for `plan` (nothing compiled or run; `measure_first_block` adds the seconds)."""
    names = [t.name for t in plan.types if t.name in plan.missing]
    return CostEstimate(plan.run_dir, plan.n_cells, len(plan.steps), type_flops(plan, names))


def format_estimate(est: CostEstimate, *, top: int = 8) -> list[str]:
    """Lines for a terminal: the request's size, the costliest types' FLOP shares, and the time."""
    total = sum(est.flops.values())
    lines = [f"{est.run_dir}: {len(est.flops)} type(s) x {est.checkpoints} checkpoint(s) = {est.cells} cells; "
             f"{total / 1e9:.3g} GFLOP per checkpoint if each type ran alone (XLA's count)"]
    ranked = sorted(est.flops.items(), key=lambda kv: -kv[1])
    if total > 0 and len(ranked) > 1:
        shown = ", ".join(f"{n} {100 * f / total:.0f}%" for n, f in ranked[:top])
        rest = f", {len(ranked) - top} more {100 * sum(f for _, f in ranked[top:]) / total:.0f}%" \
            if len(ranked) > top else ""
        lines.append(f"  costliest by FLOPs: {shown}{rest}")
    if est.seconds is not None:
        lines.append(f"  measured on the first checkpoint(s): compile {est.compile_seconds:.1f}s, then "
                     f"{est.seconds_per_checkpoint:.2f}s per checkpoint -> about {_duration(est.seconds)} in all")
    return lines


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
