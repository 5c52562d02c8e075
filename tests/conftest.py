"""Shared test fixtures and strict JAX settings."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")

import jax
import pytest

jax.config.update("jax_numpy_dtype_promotion", "standard")


@pytest.fixture
def key():
    return jax.random.key(0)
