"""Imports the modules that register the built-in types (done lazily by the registry)."""

from . import _ablation_types, _attention_types, _output_types, _weight_types  # noqa: F401
