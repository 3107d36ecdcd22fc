"""Mean-field theory against closed forms, Monte Carlo, the literature and wide networks."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradjax as gj
from gradjax.commands.cli import main as cli_main
from gradjax.meanfield import theory
from gradjax.meanfield.activations import checked_activation
from gradjax.utils.errors import GradjaxInputError


def _f(x) -> float:
    return float(np.asarray(x))


# ----------------------------------------------------------------------------- closed forms


def test_relu_chi1_is_half_sigma_w2_exactly(x64):
    # E[relu'(z)^2] = P(z > 0) = 1/2 for any variance, so chi_1 = sigma_w^2 / 2.
    for sw2 in (0.5, 1.0, 1.9):
        for q in (1e-3, 0.7, 25.0):
            chi = gj.theory.gradient_factor(q, activation="relu", sigma_w2=sw2)
            assert _f(chi) == pytest.approx(sw2 / 2, rel=1e-14)
    mf = gj.mean_field("relu", jnp.array([0.5, 1.0, 1.9]), 0.1)
    np.testing.assert_allclose(np.asarray(mf.chi1), [0.25, 0.5, 0.95], rtol=1e-14)
    # q* = sigma_b^2 / (1 - sigma_w^2/2) in closed form (the q-map is linear for ReLU).
    np.testing.assert_allclose(
        np.asarray(mf.q_star), 0.1 / (1 - np.array([0.5, 1.0, 1.9]) / 2), rtol=1e-10
    )
    assert bool(np.all(np.asarray(mf.q_converged)))


def test_erf_q_map_closed_form(x64):
    # Williams (1997), "Computing with infinite networks": E[erf(sqrt(q) z)^2] =
    # (2/pi) arcsin(2q / (1 + 2q)).
    for q in (1e-4, 0.1, 1.0, 7.5, 200.0):
        got = gj.theory.q_map(q, activation="erf", sigma_w2=1.0, sigma_b2=0.0)
        assert _f(got) == pytest.approx(2 / math.pi * math.asin(2 * q / (1 + 2 * q)), rel=1e-12)


def test_c_map_closed_forms(x64):
    # Williams (1997) arcsine kernel for erf and Cho & Saul (2009) arc-cosine kernel for ReLU.
    q, sw2, sb2 = 1.7, 2.0, 0.1
    norm = sw2 * (2 / math.pi) * math.asin(2 * q / (1 + 2 * q)) + sb2
    for c in (0.0, 0.3, 0.9, 1.0):
        got = gj.theory.c_map(c, activation="erf", q=jnp.float64(q), sigma_w2=sw2, sigma_b2=sb2)
        want = (sw2 * (2 / math.pi) * math.asin(2 * q * c / (1 + 2 * q)) + sb2) / norm
        assert _f(got) == pytest.approx(want, abs=1e-8)
        relu = gj.theory.c_map(c, activation="relu", q=jnp.float64(q), sigma_w2=2.0, sigma_b2=0.0)
        want_relu = (math.sqrt(1 - c * c) + (math.pi - math.acos(c)) * c) / math.pi
        # The 2-D rule is split at ReLU's kinks: the arc-cosine kernel to round-off.
        assert _f(relu) == pytest.approx(want_relu, abs=1e-9)


def test_tanh_critical_point_at_zero_bias_is_one(x64):
    # Poole et al. (2016), "Exponential expressivity ... transient chaos": for tanh with
    # sigma_b = 0 the order-to-chaos transition is at sigma_w = 1.
    assert gj.theory.critical_sigma_w2("tanh", 0.0) == pytest.approx(1.0, abs=1e-4)


def test_linear_and_slopes_match_finite_differences(x64):
    assert gj.theory.critical_sigma_w2("linear", 0.3) == pytest.approx(1.0, rel=1e-9)
    # q_slope (Price's theorem) against a central difference of the q-map.
    mf = gj.mean_field("tanh", 1.8, 0.2)
    qs, h = _f(mf.q_star), 1e-5
    qmap = lambda q: _f(gj.theory.q_map(q, activation="tanh", sigma_w2=1.8, sigma_b2=0.2))
    assert _f(mf.q_slope) == pytest.approx((qmap(qs + h) - qmap(qs - h)) / (2 * h), rel=1e-7)
    assert _f(mf.xi_q) == pytest.approx(-1 / math.log(_f(mf.q_slope)), rel=1e-12)
    # chi_c against a central difference of the c-map at c* (chaotic phase, c* < 1).
    mf = gj.mean_field("tanh", 3.0, 0.05)
    cs = _f(mf.c_star)
    assert 0.0 < cs < 0.99 and bool(mf.c_converged)
    cmap = lambda c: _f(
        gj.theory.c_map(c, activation="tanh", q=mf.q_star, sigma_w2=3.0, sigma_b2=0.05)
    )
    assert cmap(cs) == pytest.approx(cs, abs=1e-10)
    assert _f(mf.chi_c) == pytest.approx((cmap(cs + 1e-5) - cmap(cs - 1e-5)) / 2e-5, rel=1e-4)


def test_predicted_gradient_growth():
    g = gj.predicted_gradient_growth(0.5, depth=4)
    np.testing.assert_allclose(np.asarray(g), [0.125, 0.25, 0.5, 1.0], rtol=1e-6)


# ----------------------------------------------------------------------------- Monte Carlo


@pytest.mark.parametrize("name", ["tanh", "sigmoid", "gelu", "swish", "elu"])
def test_quadrature_matches_monte_carlo(name, x64):
    q = 2.3
    z = np.random.default_rng(0).standard_normal(400_000)
    u = jnp.asarray(math.sqrt(q) * z)
    act = gj.get_activation(name)
    dphi = gj.activations.derivative(name)
    for f in (lambda v: act(v) ** 2, lambda v: dphi(v) ** 2):
        samples = np.asarray(f(u))
        mc, se = samples.mean(), samples.std() / math.sqrt(samples.size)
        quad = _f(gj.theory.gaussian_expectation(f, jnp.float64(q)))
        assert abs(quad - mc) < 5 * se, (name, quad, mc, se)


# ----------------------------------------------------------------------------- literature


def test_published_critical_points(x64):
    # He et al. (2015), "Delving deep into rectifiers": ReLU needs sigma_w^2 = 2.
    assert gj.theory.critical_sigma_w2("relu", 0.0) == pytest.approx(2.0, rel=1e-6)
    # For ReLU chi_1 does not depend on q*, so the bias does not move the critical point.
    assert gj.theory.critical_sigma_w2("relu", 0.3) == pytest.approx(2.0, rel=1e-6)
    # Schoenholz et al. (2017), "Deep information propagation", Sec. 3 / Fig. 1: tanh at
    # sigma_b^2 = 0.05 is critical at sigma_w^2 ~ 1.76.
    assert gj.theory.critical_sigma_w2("tanh", 0.05) == pytest.approx(1.76, abs=0.01)


def test_selu_fixed_point_is_one(x64):
    # Klambauer et al. (2017), "Self-normalizing neural networks": with LeCun-normal weights
    # (sigma_w^2 = 1) and no bias, SELU maps unit variance to unit variance (q* = 1).
    mf = gj.mean_field("selu", 1.0, 0.0)
    assert bool(mf.q_converged)
    assert _f(mf.q_star) == pytest.approx(1.0, abs=1e-6)


def test_sigmoid_has_a_critical_point_and_monte_carlo_agrees(x64):
    # The point the article misses: sigmoid is not doomed; chi_1 = 1 at a large sigma_w^2
    # (phi'(0) = 1/4 forces sigma_w^2 > 16; q* is large there, so the check is by MC).
    sw2 = gj.theory.critical_sigma_w2("sigmoid", 0.0)
    assert 60 < sw2 < 200
    mf = gj.mean_field("sigmoid", sw2, 0.0)
    z = np.random.default_rng(1).standard_normal(1_000_000)
    s = 1 / (1 + np.exp(-math.sqrt(_f(mf.q_star)) * z))
    d = sw2 * (s * (1 - s)) ** 2
    assert abs(d.mean() - 1.0) < 5 * d.std() / math.sqrt(d.size)


# ----------------------------------------------------------------------------- wide networks


def test_empirical_chi1_of_a_wide_network_matches_theory(getkey):
    # Finite-width corrections to chi_1 are O(1/N) (about -2% at N = 256) and the seed-to-seed
    # spread of the measured value is ~1.5%. Tolerance: 5%.
    sw2, sb2 = 1.5, 0.05
    net = gj.build(
        gj.NetConfig(
            depth=12, width=256, activation="tanh", sigma_w=math.sqrt(sw2), sigma_b=math.sqrt(sb2)
        )
    )
    params = net.init(getkey())
    x = jax.random.normal(getkey(), (256,))
    emp = jax.jit(lambda p, x, k: gj.empirical_chi1(net, p, x, key=k, probes=16))(
        params, x, getkey()
    )
    assert _f(emp.chi1) == pytest.approx(_f(gj.mean_field("tanh", sw2, sb2).chi1), rel=0.05)


def test_critical_init_gives_unit_mean_squared_singular_value(getkey):
    # NetConfig(init="critical") scales weights to the critical sigma_w^2, so each layer
    # Jacobian's mean squared singular value ||J||_F^2 / N (exact, materialised J) is ~1 at
    # large width: measured 0.98 +- 0.015 over seeds at N = 256 (an O(1/N) bias). Tolerance 5%.
    width = 256
    cfg = gj.NetConfig(depth=10, width=width, activation="tanh", init="critical", sigma_b=0.2)
    net = gj.build(cfg)
    params = net.init(getkey())
    xs = jax.random.normal(getkey(), (4, width))
    hidden = jax.jit(jax.vmap(lambda x: gj.layer_jacobians(net, params, x).hidden))
    per_x = hidden(xs)
    mean_sq = np.asarray(jnp.sum(per_x**2, axis=(2, 3)) / width)[:, 3:]
    assert np.mean(mean_sq) == pytest.approx(1.0, abs=0.05)
    w_var = np.var(np.asarray(params["hidden"]["W"])) * width
    assert w_var == pytest.approx(gj.theory.critical_sigma_w2("tanh", 0.04), rel=0.02)


# ----------------------------------------------------------------------------- transforms


def test_mean_field_under_user_jit_and_vmap_and_no_recompile():
    grid = jnp.linspace(0.5, 3.0, 5)
    direct = gj.mean_field("tanh", grid, 0.05)
    via_vmap = jax.jit(
        jax.vmap(
            lambda s: theory._mean_field_point(
                checked_activation("tanh"), s, jnp.float32(0.05), 500
            )
        )
    )(grid)
    np.testing.assert_allclose(np.asarray(via_vmap.chi1), np.asarray(direct.chi1), rtol=1e-6)
    fn = theory._mean_field_fn(checked_activation("tanh"), 500, 1)
    before = fn._cache_size()
    gj.mean_field("tanh", grid + 0.1, 0.2)
    assert fn._cache_size() == before


def test_critical_line_is_vectorised_and_increasing():
    line = gj.critical_line("tanh", [0.0, 0.05, 0.5])
    w = np.asarray(line.sigma_w2)
    assert np.all(np.asarray(line.found)) and np.all(np.diff(w) > 0)
    assert w[1] == pytest.approx(gj.theory.critical_sigma_w2("tanh", 0.05), rel=1e-5)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf")])
def test_bad_variances_raise(value):
    with pytest.raises(GradjaxInputError, match="sigma_w2"):
        gj.mean_field("tanh", value, 0.0)
    with pytest.raises(GradjaxInputError, match="sigma_b2"):
        gj.theory.critical_sigma_w2("tanh", value)


def test_non_differentiable_activations_raise():
    with pytest.raises(GradjaxInputError, match="differentiate"):
        gj.mean_field(lambda x: jnp.asarray(np.tanh(np.asarray(x))), 1.0, 0.0)
    with pytest.raises(GradjaxInputError, match="non-zero derivative"):
        gj.mean_field(lambda x: jnp.where(x > 0, 1.0, 0.0), 1.0, 0.0)


def test_empty_grid_raises():
    with pytest.raises(GradjaxInputError, match="zero points"):
        gj.theory.mean_field_grid("tanh", [], [0.1])
    with pytest.raises(GradjaxInputError, match="zero points"):
        gj.critical_line("tanh", [])


def test_no_critical_point_in_range_says_so():
    with pytest.raises(
        GradjaxInputError, match=r"no critical sigma_w2 in \[0.01, 0.5\].*: chi_1 stays below 1"
    ):
        gj.theory.critical_sigma_w2("tanh", 0.05, sigma_w2_max=0.5)
    line = gj.critical_line("tanh", [0.05], sigma_w2_max=0.5)
    assert not bool(line.found[0]) and np.isnan(np.asarray(line.sigma_w2)[0])


def test_non_convergence_is_reported_not_hidden():
    # ReLU above sigma_w^2 = 2 has no finite q*: q_star is inf, the status says why, and chi_1
    # is its q -> inf limit (sigma_w^2 / 2 for ReLU, at any q).
    for sw2, iterations in ((3.0, None), (2.01, 500)):
        mf = gj.mean_field("relu", sw2, 0.0)
        assert not bool(mf.q_converged)
        assert _f(mf.q_star) == math.inf and theory.status_name(mf.q_status) == "diverges"
        assert _f(mf.chi1) == pytest.approx(sw2 / 2, rel=1e-6)
        if iterations:  # slow growth (1.005 per layer) still certified: no fixed point above
            assert int(mf.q_iterations) == iterations
    # A scaled softplus grows without bound too (it used to return q* = 1e30 as a number).
    fp = gj.q_fixed_point(lambda x: 2.0 * jax.nn.softplus(x), 1.0, 0.1)
    assert _f(fp.value) == math.inf and theory.status_name(fp.status) == "diverges"
    # An iteration cap that is too small is reported too.
    fp = gj.q_fixed_point("tanh", 1.0, 0.0, max_iter=2)
    assert not bool(fp.converged) and int(fp.iterations) == 2
    assert theory.status_name(fp.status) == "no_convergence"
    assert abs(_f(fp.residual)) > 0


def test_gelu_diverging_q_star_is_a_jump_not_a_critical_point():
    # GELU at sigma_b^2 = 0.05: the length map has a stable fixed point near 0.16 and an
    # unstable one near 1; from q0 = 1 the signal diverges once the unstable one drops below 1
    # (sigma_w^2 = 2.2341), and chi_1 leaps from 0.734 to above 1 there without crossing it.
    mf = gj.mean_field("gelu", jnp.array([2.2, 2.25, 3.0]), 0.05)
    q = np.asarray(mf.q_star)
    assert q[0] == pytest.approx(0.1563, abs=1e-3) and np.all(np.isinf(q[1:]))
    assert [theory.status_name(s) for s in np.asarray(mf.q_status)] == [
        "converged",
        "diverges",
        "diverges",
    ]
    # Past the jump GELU(u) ~ ReLU(u) for a huge signal: chi_1 -> sigma_w^2 / 2.
    np.testing.assert_allclose(np.asarray(mf.chi1)[1:], [1.125, 1.5], rtol=1e-5)
    # One sigma_b^2 per call, as critical_sigma_w2 below makes it: all three share one
    # compiled search.
    line = gj.critical_line("gelu", [0.05])
    assert not bool(line.found[0]) and bool(line.jump[0])
    assert np.isnan(np.asarray(line.sigma_w2)[0])
    assert _f(line.jump_sigma_w2[0]) == pytest.approx(2.2341, abs=2e-4)
    assert _f(line.chi1_below[0]) == pytest.approx(0.734, abs=2e-3)
    # Above the jump the signal diverges and GELU acts as ReLU: chi_1 = sigma_w^2 / 2.
    assert _f(line.chi1_above[0]) == pytest.approx(1.001 * 2.2341 / 2, rel=2e-4)
    # At sigma_b^2 = 0.3 the crossing is a true one: chi_1 is continuous through 1.
    line = gj.critical_line("gelu", [0.3])
    assert bool(line.found[0]) and not bool(line.jump[0])
    mf = gj.mean_field("gelu", line.sigma_w2, 0.3)  # rank 1, as above: the same program
    assert _f(mf.chi1[0]) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(GradjaxInputError, match="jumps from 0.734"):
        gj.theory.critical_sigma_w2("gelu", 0.05)


@pytest.mark.parametrize("name", ["tanh", "erf", "relu", "gelu"])
def test_float32_and_float64_agree(name):
    # The same points in both precisions (float64 as the reference) agree to float32 accuracy.
    sw2 = np.array([0.8, 1.5, 1.9, 2.6])
    names = ("q_star", "chi1", "c_star", "q_slope")
    f32 = gj.mean_field(name, sw2, 0.1)
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        f64 = gj.mean_field(name, sw2, 0.1)
        line64 = gj.critical_line(name, [0.1])
    finally:
        jax.config.update("jax_enable_x64", previous)
    np.testing.assert_array_equal(np.asarray(f32.q_status), np.asarray(f64.q_status))
    for field in names:
        a, b = np.asarray(getattr(f32, field)), np.asarray(getattr(f64, field))
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6, err_msg=f"{name} {field}")
    # The critical point (tanh, erf, relu), or GELU's jump over chi_1 = 1, at the same place.
    line32 = gj.critical_line(name, [0.1])
    for field in ("found", "jump"):
        assert bool(getattr(line32, field)[0]) == bool(getattr(line64, field)[0])
    where = "jump_sigma_w2" if bool(line64.jump[0]) else "sigma_w2"
    assert bool(line64.jump[0]) == (name == "gelu")
    assert _f(getattr(line32, where)[0]) == pytest.approx(_f(getattr(line64, where)[0]), rel=1e-4)


# ----------------------------------------------------------------------------- command line


def test_cli_json(capsys):
    assert (
        cli_main(
            ["theory", "--activation", "tanh", "--sigma-b2", "0.05", "--sigma-w2", "1.5", "--json"]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    for key in ("q_star", "chi1", "c_star", "xi_q", "xi_c", "xi_grad", "critical_sigma_w2"):
        assert key in out
    assert out["chi1"] == pytest.approx(_f(gj.mean_field("tanh", 1.5, 0.05).chi1), rel=1e-6)
    assert out["critical_sigma_w2"] == pytest.approx(1.76, abs=0.01)


def test_cli_infinite_depth_scale_is_the_string_inf(capsys):
    # Linear net at sigma_w^2 = 1 has chi_1 = 1 exactly: xi_grad is infinite.
    assert (
        cli_main(
            ["theory", "--activation", "linear", "--sigma-b2", "0.0", "--sigma-w2", "1", "--json"]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["xi_grad"] == "inf"


def test_cli_reports_divergence_jumps_and_bad_input(capsys):
    assert cli_main(["theory", "--activation", "relu", "--sigma-b2", "0", "--sigma-w2", "3"]) == 0
    assert "q* diverges" in capsys.readouterr().err
    argv = ["theory", "--activation", "gelu", "--sigma-w2", "2.3", "--json"]
    assert cli_main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["q_star"] == "inf" and out["q_status"] == "diverges"
    assert out["chi1"] == pytest.approx(1.15, rel=1e-5)
    assert any("diverges" in note for note in out["notes"])
    # No critical point for GELU at the default sigma_b^2 = 0.05: the jump is reported, with
    # the option that exists (--sigma-w2), not a spurious critical point.
    assert cli_main(["theory", "--activation", "gelu"]) == 2
    err = capsys.readouterr().err
    assert "jumps from 0.7343 to 1.118" in err and "--sigma-w2" in err
    assert "sigma_w2_max" not in err
    assert cli_main(["theory", "--sigma-b2", "-1"]) == 2
    assert "--sigma-b2" in capsys.readouterr().err
