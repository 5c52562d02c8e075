"""The suite runs strict JAX: implicit rank promotion is an error here and in every process a test
starts (the command line included), so a broadcast the code does not write out fails a test."""

import subprocess
import sys

import jax.numpy as jnp
import pytest


def test_implicit_rank_promotion_raises_here_and_in_the_processes_tests_start():
    with pytest.raises(ValueError, match="jax_numpy_rank_promotion='raise'"):
        jnp.ones((2, 3)) + jnp.ones(3)
    child = subprocess.run([sys.executable, "-c", "import jax.numpy as jnp; jnp.ones((2, 3)) + jnp.ones(3)"],
                           capture_output=True, text=True)
    assert child.returncode != 0 and "jax_numpy_rank_promotion='raise'" in child.stderr
    assert (jnp.ones((2, 3)) + jnp.ones((1, 3))).shape == (2, 3)  # written out: fine
