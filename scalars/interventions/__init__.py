"""Interventions on a probe's clean run, as pure functions with prefix reuse: head and neuron
ablations (also the fast residual-identity form), activation / path / attribution patching, SGLD
sampling around a checkpoint, and the `Context` a type function receives (its options and memoized
intervention helpers)."""

from ._context import Context as Context

__all__ = ["Context"]
