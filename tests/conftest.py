"""Test configuration: strict dtype promotion, four fake CPU devices, a key fixture."""

import os

# Several host devices let the sharded sweep be tested on a CPU; this must be set before JAX
# initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("MPLBACKEND", "Agg")

import itertools  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

# The model zoo (`examples/`) is not part of the package; it is importable from the repository
# root. Appended, not prepended: `gradjax` itself must still come from the installed package.
sys.path.append(str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")
# The tests check numbers, not speed: XLA's cheapest compilation (most passes off) compiles
# the suite's many small programs several times faster. Benchmarks run fully optimised.
jax.config.update("jax_disable_most_optimizations", True)


@pytest.fixture
def getkey():
    """Returns a function that hands out a fresh PRNG key on every call."""
    counter = itertools.count()
    root = jax.random.key(1234)
    return lambda: jax.random.fold_in(root, next(counter))


@pytest.fixture
def x64():
    """Runs a test with 64-bit JAX enabled, restoring the previous setting afterwards."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)
