"""Bad library calls raise GradjaxInputError, never TypeError/ValueError/OverflowError.

Each entry is a call a user could make by mistake; every one must be refused with
:class:`gradjax.GradjaxInputError` (a ``ValueError``) whose one-line message names the
argument, the value and what is allowed, so a script or the command line can report it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradjax as gj
from gradjax.meanfield import theory
from gradjax.measure import probes
from gradjax.utils.errors import GradjaxInputError

NET = gj.build(gj.NetConfig(depth=3, width=4, activation="tanh"))  # 4 -> 4 -> 4 -> 4 -> 1
PARAMS = NET.init(jax.random.key(0))
X = jnp.ones((4, 4), jnp.float32)
Y = jnp.ones((4, 1), jnp.float32)
PROBE = probes.gradient_probe(NET, batch=2)


def swp(**kw):
    args = dict(seeds=1, sigma_w=[1.0])
    args.update(kw)
    return lambda: gj.sweep(NET, PROBE, **args)


BAD = {
    # NetConfig
    "netconfig_depth_0": lambda: gj.NetConfig(depth=0, width=4),
    "netconfig_depth_float": lambda: gj.NetConfig(depth=2.0, width=4),
    "netconfig_depth_str": lambda: gj.NetConfig(depth="2", width=4),
    "netconfig_width_none": lambda: gj.NetConfig(depth=2, width=None),
    "netconfig_width_bool": lambda: gj.NetConfig(depth=2, width=True),
    "netconfig_sigma_w_nan": lambda: gj.NetConfig(depth=2, width=4, sigma_w=float("nan")),
    "netconfig_sigma_w_neg": lambda: gj.NetConfig(depth=2, width=4, sigma_w=-1.0),
    "netconfig_sigma_w_array": lambda: gj.NetConfig(depth=2, width=4, sigma_w=np.ones(2)),
    "netconfig_sigma_b_inf": lambda: gj.NetConfig(depth=2, width=4, sigma_b=np.inf),
    "netconfig_activation": lambda: gj.NetConfig(depth=2, width=4, activation="sigmod"),
    "netconfig_activation_none": lambda: gj.NetConfig(depth=2, width=4, activation=None),
    "netconfig_init": lambda: gj.NetConfig(depth=2, width=4, init="xavier"),
    "netconfig_norm": lambda: gj.NetConfig(depth=2, width=4, norm="group"),
    "netconfig_residual": lambda: gj.NetConfig(depth=2, width=4, residual="dense"),
    "netconfig_in_dim_0": lambda: gj.NetConfig(depth=2, width=4, input_dim=0),
    "netconfig_out_dim_neg": lambda: gj.NetConfig(depth=2, width=4, out_dim=-3),
    # TrainConfig
    "trainconfig_lr_0": lambda: gj.TrainConfig(learning_rate=0.0),
    "trainconfig_steps_0": lambda: gj.TrainConfig(steps=0),
    "trainconfig_steps_float": lambda: gj.TrainConfig(steps=10.0),
    "trainconfig_optimizer": lambda: gj.TrainConfig(optimizer="rmsprop"),
    "trainconfig_clip_neg": lambda: gj.TrainConfig(clip=-1.0),
    "trainconfig_batch_0": lambda: gj.TrainConfig(batch_size=0),
    # Net
    "net_init_int": lambda: NET.init(0),
    "net_init_none": lambda: NET.init(None),
    "net_init_float_array": lambda: NET.init(jnp.zeros(2)),
    "net_apply_wrong_width": lambda: NET.apply(PARAMS, jnp.ones((4, 5))),
    "net_apply_1d": lambda: NET.apply(PARAMS, jnp.ones(3)),
    "build_not_config": lambda: gj.build({"depth": 2}),
    # sweep
    "sweep_seeds_float": swp(seeds=2.0),
    "sweep_seeds_0": swp(seeds=0),
    "sweep_seeds_neg_list": swp(seeds=[-1]),
    "sweep_seeds_str": swp(seeds="2"),
    "sweep_probe_none": lambda: gj.sweep(NET, None, seeds=1, sigma_w=[1.0]),
    "sweep_net_none": lambda: gj.sweep(None, PROBE, seeds=1, sigma_w=[1.0]),
    "sweep_key_huge": swp(key=2**70),
    "sweep_key_neg": swp(key=-1),
    "sweep_key_float": swp(key=1.5),
    "sweep_sigma_w_neg": swp(sigma_w=[-1.0, 1.0]),
    "sweep_sigma_w_nan": swp(sigma_w=[np.nan]),
    "sweep_sigma_w_empty": swp(sigma_w=[]),
    "sweep_sigma_w_2d": swp(sigma_w=np.ones((2, 2))),
    "sweep_sigma_b_neg": swp(sigma_b=[-0.5]),
    "sweep_budget_0": swp(memory_budget_mb=0.0),
    "sweep_budget_nan": swp(memory_budget_mb=float("nan")),
    "sweep_chunk_0": swp(chunk=(0, 1)),
    "sweep_chunk_len3": swp(chunk=(1, 1, 1)),
    "sweep_chunk_float": swp(chunk=(1.0, 1)),
    "sweep_devices_0": swp(devices=0),
    "sweep_devices_many": swp(devices=10**6),
    "sweep_devices_str": swp(devices="cpu"),
    "sweep_progress_str": swp(progress="yes"),
    "sweep_out_dir_file": swp(out_dir="/dev/null/x"),
    # gradients
    "lgn_targets_broadcast": lambda: gj.layer_gradient_norms(NET, PARAMS, X, jnp.ones((4, 3))),
    "lgn_targets_batch": lambda: gj.layer_gradient_norms(NET, PARAMS, X, jnp.ones((3, 1))),
    "lgn_loss_name": lambda: gj.layer_gradient_norms(NET, PARAMS, X, Y, loss="hinge"),
    "lgn_x_wrong_width": lambda: gj.layer_gradient_norms(NET, PARAMS, jnp.ones((4, 7)), Y),
    "layer_gradients_loss_int": lambda: gj.layer_gradients(NET, PARAMS, X, Y, loss=3),
    "mse_shape_mismatch": lambda: gj.mse_loss(jnp.ones((4, 1)), jnp.ones((4, 3))),
    "cross_entropy_labels_float": lambda: gj.cross_entropy_loss(jnp.ones((4, 3)), jnp.ones(4)),
    "cross_entropy_labels_shape": lambda: gj.cross_entropy_loss(
        jnp.ones((4, 3)), jnp.ones((5,), jnp.int32)
    ),
    # initializers
    "init_weight_kind": lambda: gj.initializers.init_weight(jax.random.key(0), (3, 3), kind="foo"),
    "init_weight_shape": lambda: gj.initializers.init_weight(jax.random.key(0), (3, -3)),
    "init_weight_sigma": lambda: gj.initializers.init_weight(
        jax.random.key(0), (3, 3), sigma_w=-1.0
    ),
    "haar_rows_0": lambda: gj.initializers.haar_orthogonal(jax.random.key(0), 0, 3),
    "haar_rows_float": lambda: gj.initializers.haar_orthogonal(jax.random.key(0), 3.0, 3),
    # activations / theory
    "get_activation_unknown": lambda: gj.get_activation("sigmod"),
    "get_activation_int": lambda: gj.get_activation(3),
    "mean_field_neg_sigma_w2": lambda: theory.mean_field("tanh", -1.0, 0.05),
    "mean_field_nan_sigma_b2": lambda: theory.mean_field("tanh", 1.0, float("nan")),
    "mean_field_activation": lambda: theory.mean_field("sigmod", 1.0, 0.05),
    "critical_sigma_w2_neg_b2": lambda: theory.critical_sigma_w2("tanh", -0.1),
    "fuss_catalan_moment_depth_0": lambda: gj.isometry.fuss_catalan_moment(0, 2),
    "fuss_catalan_density_points": lambda: gj.isometry.fuss_catalan_density(2, points=0),
    "gaussian_product_exponents_n": lambda: gj.lyapunov.gaussian_product_exponents(0),
    "gaussian_product_exponents_k": lambda: gj.lyapunov.gaussian_product_exponents(4, k=9),
    "parse_range_bad": lambda: gj.config.parse_range("--x", "1:2"),
    "parse_range_nan": lambda: gj.config.parse_range("--x", "nan,1"),
    # spectra / jacobians
    "singular_values_1d": lambda: gj.singular_values(jnp.ones(3)),
    "spectrum_summary_1d": lambda: gj.spectrum_summary(jnp.ones(3)),
    "jacobian_spectra_depth_0": lambda: gj.isometry.jacobian_spectra(NET, PARAMS, X, depths=(0,)),
    "jacobian_spectra_depth_big": lambda: gj.isometry.jacobian_spectra(
        NET, PARAMS, X, depths=(99,)
    ),
    "io_jacobian_to": lambda: gj.io_jacobian(NET, PARAMS, X, to="nowhere"),
    "lyapunov_k_0": lambda: gj.lyapunov_spectrum(NET, PARAMS, X[0], k=0),
    "matrix_lyapunov_1d": lambda: gj.lyapunov.matrix_lyapunov_spectrum(jnp.ones(3)),
    "empirical_chi1_probes_0": lambda: gj.empirical_chi1(
        NET, PARAMS, X, key=jax.random.key(0), probes=0
    ),
    # optim / data / train
    "mitigation_chain_optimizer": lambda: gj.mitigation_chain(
        optimizer="rmsprop", learning_rate=0.1, total_steps=10
    ),
    "mitigation_chain_lr_neg": lambda: gj.mitigation_chain(learning_rate=-0.1, total_steps=10),
    "mitigation_chain_steps_0": lambda: gj.mitigation_chain(learning_rate=0.1, total_steps=0),
    "clip_by_global_norm_neg": lambda: gj.optim.clip_by_global_norm(-1.0),
    "add_l1_penalty_neg": lambda: gj.optim.add_l1_penalty(-1.0),
    "get_dataset_unknown": lambda: gj.data.get_dataset("mnist"),
    "residual_profile_batch_0": lambda: gj.residual.residual_profile(
        NET, jax.random.key(0), batch=0
    ),
    "critical_point_q_neg": lambda: gj.isometry.critical_point("tanh", q_star=-1.0),
    "derivative_moments_q_nan": lambda: gj.isometry.derivative_moments("tanh", q_star=float("nan")),
    "isometry_prediction_ensemble": lambda: gj.isometry.isometry_prediction(
        "tanh", q_star=1.0, ensemble="unitary", depth=2
    ),
    "scale_invariance_layer": lambda: gj.normalization.scale_invariance(
        NET, PARAMS, X, Y, layer=99, c=2.0
    ),
    "diagnose_net_targets": lambda: gj.diagnose_net(NET, PARAMS, X, jnp.ones((3, 1))),
}


def test_the_table_is_large_enough():
    assert len(BAD) >= 56


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_call_raises_gradjax_input_error(name):
    with pytest.raises(GradjaxInputError) as info:
        BAD[name]()
    text = str(info.value)
    assert "\n" not in text and " is invalid: expected " in text, text


@pytest.mark.parametrize("width", [8, np.int64(8), np.int32(8), np.uint16(8)])
def test_netconfig_accepts_numpy_integers(width):
    cfg = gj.NetConfig(depth=np.int64(2), width=width, sigma_w=np.float32(1.5))
    net = gj.build(cfg)
    params = net.init(jax.random.key(0))
    assert net.apply(params, jnp.ones((3, 8), jnp.float32)).shape == (3, 1)


def test_layer_gradient_norms_loss_matches_numpy_mse_when_shapes_agree():
    # The refusal above is for shapes that would broadcast; with matching shapes the loss is
    # half the squared error summed over outputs, averaged over the batch (computed here in
    # float64 NumPy, independently of the library).
    y = jnp.asarray(np.linspace(-1.0, 1.0, 4).reshape(4, 1), jnp.float32)
    out = np.asarray(NET.apply(PARAMS, X), np.float64)
    expected = 0.5 * np.mean(np.sum((out - np.asarray(y, np.float64)) ** 2, axis=-1))
    norms = gj.layer_gradient_norms(NET, PARAMS, X, y)
    np.testing.assert_allclose(float(norms.loss), expected, rtol=1e-5)
