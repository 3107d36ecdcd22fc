"""The input checks: NumPy scalars accepted, everything else refused with one named line."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradjax.utils.errors import GradjaxInputError, as_int, check_int, check_key, check_real


@pytest.mark.parametrize("value", [8, np.int64(8), np.int32(8), np.uint8(8), np.array(8)])
def test_check_int_accepts_python_and_numpy_integers(value):
    check_int("width", value, minimum=1)
    assert as_int("width", value) == 8 and type(as_int("width", value)) is int


@pytest.mark.parametrize("value", [True, np.bool_(True), 8.0, np.float64(8), "8", None, [8]])
def test_check_int_refuses_non_integers(value):
    with pytest.raises(GradjaxInputError, match=r"^width=.* is invalid: expected an integer"):
        check_int("width", value, minimum=1)


@pytest.mark.parametrize("value", [1.5, np.float32(1.5), np.float64(1.5), np.int64(3), 2])
def test_check_real_accepts_python_and_numpy_numbers(value):
    check_real("sigma_w", value, minimum=0.0)


@pytest.mark.parametrize(
    "value", [float("nan"), np.inf, -1.0, "1.0", True, np.array([1.0, 2.0]), 10**400, 1j]
)
def test_check_real_refuses_non_finite_negative_and_non_numbers(value):
    with pytest.raises(GradjaxInputError, match=r"^sigma_w=.* is invalid: expected a finite"):
        check_real("sigma_w", value, minimum=0.0)


def test_check_int_bounds_are_inclusive():
    check_int("depth", 1, minimum=1, maximum=3)
    check_int("depth", 3, minimum=1, maximum=3)
    for bad in (0, 4):
        with pytest.raises(GradjaxInputError, match=r"in \[1, 3\]"):
            check_int("depth", bad, minimum=1, maximum=3)


@pytest.mark.parametrize("key", [0, np.uint64(2**64 - 1), jax.random.key(0), jax.random.PRNGKey(0)])
def test_check_key_accepts_keys_and_64_bit_seeds(key):
    check_key("key", key)


@pytest.mark.parametrize("key", [-1, 2**64, 2**70, 1.0, "0", None, jnp.zeros(3)])
def test_check_key_refuses_what_jax_random_key_cannot_take(key):
    with pytest.raises(GradjaxInputError, match=r"^key=.* is invalid"):
        check_key("key", key)


@pytest.mark.parametrize("key", [0, np.int64(3), jnp.zeros(2, jnp.float32), None])
def test_check_key_without_seeds_wants_a_key(key):
    with pytest.raises(GradjaxInputError, match=r"expected a PRNG key"):
        check_key("key", key, allow_seed=False)
    check_key("key", jax.random.key(3), allow_seed=False)
