"""Cost estimates against the real parameter count and the operating system's memory size."""

import jax
import numpy as np
import pytest

import gradjax as gj
from gradjax.sweeps import cost


def test_parameter_bytes_equal_the_built_network():
    net = gj.build(gj.NetConfig(depth=5, width=12, activation="tanh"))
    params = net.init(jax.random.key(0))
    n = sum(leaf.size for leaf in jax.tree.leaves(params))
    est = cost.network_cost(width=12, depth=5, batch=3, input_dim=net.cfg.input_dim)
    assert est.param_bytes == 4 * n
    # Closed form: D*N + (L-1)*N^2 + N*O weights, L*N + O biases.
    assert n == 12 * 12 + 4 * 144 + 12 + 5 * 12 + 1
    assert est.activation_bytes == 4 * 2 * 5 * 3 * 12


def test_sizes_beyond_any_machine_are_refused_with_one_line():
    need = cost.estimate_network_bytes(1_000_000, 32, 16)
    assert need > 31 * 10**12 * 4  # the hidden weights alone
    with pytest.raises(gj.GradjaxInputError) as err:
        cost.check_fits("--width=1000000: one network", need, 16 * cost.GIB)
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith("--width=1000000: one network needs ")
    assert text.endswith("for one chunk; the limit is 16.0 GiB")
    cost.check_fits("small", 10, 16 * cost.GIB)  # fits: nothing raised
    cost.check_fits("unknown limit", need, 0)  # no limit known: nothing refused


def test_cpu_memory_limit_is_the_hosts_physical_memory():
    with open("/proc/meminfo") as f:
        total_kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    limit = cost.memory_limit_bytes(jax.devices("cpu")[0])
    # The kernel reserves a little memory, so MemTotal is slightly below the physical pages.
    np.testing.assert_allclose(limit, total_kib * 1024, rtol=0.05)


def test_estimate_totals():
    est = cost.Estimate(chunk_bytes=2 * cost.GIB, chunk_flops=10**9, chunks=4, output_bytes=2**20)
    assert est.total_flops == 4 * 10**9
    assert est.describe() == (
        "4 chunks of 2.0 GiB and 1 GFLOP each (0.004 TFLOP in all); results 1.0 MiB"
    )
    with pytest.raises(gj.GradjaxInputError, match="width"):
        cost.network_cost(width=0, depth=2, batch=1)
