"""Degenerate input is refused or named, never judged as if it were gradient flow."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import gradjax as gj


class Classifier(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(nn.tanh(nn.Dense(8)(x)))


X = jax.random.normal(jax.random.key(0), (6, 4))


def _variables():
    return Classifier().init(jax.random.key(1), X)


def test_labels_outside_the_class_range_are_refused():
    labels = jnp.array([0, 1, 2, 3, 0, 1])  # 3 is not a class of a 3-output model
    with pytest.raises(gj.GradjaxInputError, match=r"labels from 0 to 3.*\[0, 3\)"):
        gj.diagnose(Classifier(), _variables(), (X, labels), "xent")


def test_an_empty_batch_is_refused():
    with pytest.raises(gj.GradjaxInputError, match="at least one example"):
        gj.diagnose(Classifier(), _variables(), (X[:0], jnp.zeros((0,), int)), "xent")
    net = gj.build(gj.NetConfig(depth=2, width=4, input_dim=4))
    with pytest.raises(gj.GradjaxInputError, match="at least one example"):
        gj.layer_gradient_norms(net, net.init(jax.random.key(0)), X[:0], jnp.zeros((0, 1)))
    with pytest.raises(gj.GradjaxInputError, match="non-empty Jacobian"):
        gj.spectrum_summary(jnp.zeros((0, 4, 4)))


def test_exactly_zero_gradients_are_no_gradient_not_non_finite():
    # jnp.round has derivative zero everywhere: the loss is finite, no gradient flows.
    model = lambda p, x: jnp.round(jnp.tanh(x @ p["w"]) @ p["v"])
    params = {"w": jnp.ones((4, 8)), "v": jnp.ones((8, 1))}
    report = gj.diagnose(model, params, (X, jnp.zeros((6, 1))), "mse")
    assert np.isfinite(report.loss)
    assert report.verdict == "no gradient"
    assert "exactly zero" in report.suggestions[0]
    assert np.isnan(report.clip_threshold) and "nothing to clip" in report.clip_basis
    # A Flax model's blocks: every region reads "no gradient", none "non-finite".
    rounded = nn.Sequential([nn.Dense(8), nn.tanh, nn.Dense(3), jnp.round])
    variables = rounded.init(jax.random.key(1), X)
    report = gj.diagnose(rounded, variables, (X, jnp.zeros((6, 3))), "mse")
    assert report.regions and {r.verdict for r in report.regions} == {"no gradient"}


def test_a_model_returning_a_tuple_is_named_as_the_model_s_fault():
    model = lambda p, x: (x @ p["w"], x)
    with pytest.raises(gj.GradjaxInputError, match="model output='tuple'.*one array"):
        gj.diagnose(model, {"w": jnp.ones((4, 1))}, (X, jnp.zeros((6, 1))), "mse")


class Normalised(nn.Module):
    train: bool

    @nn.compact
    def __call__(self, x):
        h = nn.BatchNorm(use_running_average=not self.train)(nn.Dense(8)(x))
        return nn.Dense(3)(nn.tanh(h))


def test_one_example_through_a_train_mode_batchnorm_is_refused():
    # Normalised over one example, every feature is its own mean: the output is the bias and
    # no gradient reaches the Dense layer below; that is not a vanishing gradient.
    variables = Normalised(True).init(jax.random.key(1), X)
    one = (X[:1], jnp.zeros((1,), int))
    with pytest.raises(gj.GradjaxInputError, match="at least 2 examples .* BatchNorm"):
        gj.diagnose(Normalised(True), variables, one, "xent", mutable=["batch_stats"])
    # In eval mode (running averages) one example is a valid batch.
    report = gj.diagnose(Normalised(False), variables, one, "xent")
    assert report.global_norm > 0
