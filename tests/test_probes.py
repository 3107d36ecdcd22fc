"""The Probe type: calling it runs both parts; combine merges probes field by field."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradjax as gj
from gradjax.measure.probes import Probe, as_probe, combine


@pytest.fixture(scope="module")
def net():
    return gj.build(gj.NetConfig(depth=5, width=16, activation="tanh"))


def test_calling_a_probe_runs_per_network_then_finalize():
    probe = Probe(per_network=lambda p, k: {"x": p * 2.0}, finalize=lambda t: t["x"] + 1.0)
    assert float(probe(jnp.float32(3.0), jax.random.key(0))) == 7.0
    assert Probe(per_network=lambda p, k: p)(jnp.float32(3.0), None) == 3.0


def test_a_plain_function_is_wrapped_and_anything_else_refused():
    fn = lambda params, key: params  # noqa: E731
    wrapped = as_probe(fn)
    assert wrapped.per_network is fn and wrapped.finalize is None and not wrapped.lazy_scales
    with pytest.raises(gj.GradjaxInputError, match="probe=3"):
        as_probe(3)
    with pytest.raises(gj.GradjaxInputError, match="probe.lazy_scales"):
        as_probe(Probe(per_network=fn, lazy_scales="yes"))


def test_combined_probe_equals_its_parts_and_keeps_their_fields(net):
    grads, spectra = gj.probes.gradient_probe(net, batch=4), gj.probes.spectrum_probe(net)
    both = combine(gradients=grads, spectra=spectra)
    # The two-part spectrum probe keeps its finalize step, and its lazy scales.
    assert both.finalize is not None and both.lazy_scales
    base = net.init_base(jax.random.key(3))
    key = jax.random.key(4)
    k_grad, k_spec = jax.random.split(key)  # one key per part, in sorted name order
    lazy = net.scale(base, sigma_w=1.7, lazy=True)
    plain = net.scale(base, sigma_w=1.7)
    got = both(lazy, key)
    want_g = grads(plain, k_grad)
    want_s = spectra(plain, k_spec)
    for a, b in zip(jax.tree.leaves(got["gradients"]), jax.tree.leaves(want_g), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(got["spectra"]), jax.tree.leaves(want_s), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # The singular values of the closed-form Jacobian diag(phi'(z)) W, against NumPy's SVD in
    # float64, independently of gradjax's spectra code.
    x = jax.random.normal(k_spec, (net.cfg.input_dim,))
    trace = net.forward(plain, x)
    layer = 2  # hidden block 2 = row 1 of the hidden stack
    d = 1.0 - np.tanh(np.asarray(trace.preact[layer], np.float64)) ** 2
    jac = d[:, None] * np.asarray(plain["hidden"]["W"][layer - 1], np.float64)
    sv = np.linalg.svd(jac, compute_uv=False)
    np.testing.assert_allclose(got["spectra"]["hidden"].sigma_max[layer - 1], sv[0], rtol=1e-4)


def test_combined_singular_values_run_in_finalize_not_per_network(net):
    probe = gj.probes.layer_gradient_and_spectrum_probe(net, batch=4)
    params = net.scale(net.init_base(jax.random.key(0)), sigma_w=1.2, lazy=True)
    per_network = jax.make_jaxpr(probe.per_network)(params, jax.random.key(1))
    finalize = jax.make_jaxpr(probe.finalize)(
        jax.eval_shape(probe.per_network, params, jax.random.key(1))
    )

    def n_svd(jaxpr) -> int:
        text = str(jaxpr)
        return text.count("svd") + text.count("gesdd")

    assert n_svd(per_network) == 0
    assert n_svd(finalize) >= 1


def test_combine_with_only_plain_parts_has_no_finalize(net):
    probe = combine(a=lambda p, k: jnp.sum(p["input"]["W"]), b=gj.probes.gradient_probe(net))
    assert probe.finalize is None and not probe.lazy_scales
    with pytest.raises(gj.GradjaxInputError, match="probes"):
        combine()
