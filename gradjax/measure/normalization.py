"""BatchNorm and LayerNorm at initialisation: scale invariance and the gradient growth rate.

Claim C11 of the article says normalisation fixes vanishing and exploding gradients and makes a
layer invariant to the scale of its weights. This module measures both, exactly:

* :func:`scale_invariance` scales one block's affine map ``(W_l, b_l)`` by ``c`` and reports how
  the block's (whole-batch) Jacobian, the loss and ``dL/dW_l`` change. With a norm after the
  matmul the Jacobian and loss do not change and ``dL/dW_l`` scales by exactly ``1/c`` (up to the
  variance floor ``norm_eps``).
* :func:`bn_gradient_rate` is the mean-field per-layer growth factor of ``||dL/da_l||^2`` of a
  deep BatchNorm network at initialisation (Yang, Pennington, Rao, Sohl-Dickstein & Schoenholz
  2019, "A mean field theory of batch normalization", ICLR). Derivation, for the model's
  placement ``a_l = phi(BN(W_l a_{l-1} + b_l))`` with ``W ~ N(0, sigma_w^2/N)``, wide layers and
  batch size ``B``:

  1. *Forward fixed point.* Per feature, the batch vector ``z_i = A W_i`` (``A``: the batch of
     block inputs) is Gaussian with a permutation-symmetric covariance, so its centred part
     ``G z_i`` (``G = I - 11^T/B``) is isotropic in the ``(B-1)``-dimensional mean-zero
     subspace. BatchNorm rescales it to norm ``sqrt(B)``: ``u_i`` is uniform on that sphere,
     whatever ``phi`` and ``sigma_w`` are (the symmetric fixed point).
  2. *Backward step.* For one feature, ``dL/dz_i = (1/s_i) P_i (phi'(u_i) * dL/da_i)`` with the
     batch standard deviation ``s_i`` of ``z_i`` and the projection ``P_i = G - u_i u_i^T / B``.
     ``s_i^2 = sigma_w^2 (d - o) chi^2_{B-1} / B`` where ``d - o`` is the gap between the
     diagonal and off-diagonal of the Gram matrix of ``phi(u)``, so
     ``E[1/s_i^2] = B / (sigma_w^2 (d - o) (B - 3))``; the direction of ``u_i`` is independent
     of ``s_i``.
  3. *Gradient independence* (as in the paper): ``dL/da_{l-1} = W_l^T dL/dz_l`` has the
     covariance ``m G`` over the batch, so ``E||dL/da_{l-1}||^2 / E||dL/da_l||^2 =
     sigma_w^2 E[1/s^2] E[tr(P D G D P)] / (B - 1)`` with ``D = diag(phi'(u))``.

  With ``v_B = E[||G phi(u)||^2 / B] = (d - o)(B - 1)/B`` this gives::

      lambda_BN(phi, B) = E[tr(P D G D P)] / ((B - 3) v_B)

  ``sigma_w`` cancels (no initialisation scale can remove the explosion). Linear: ``D = I``,
  ``tr(P) = B - 2`` and ``v_B = 1``, so ``lambda = (B - 2)/(B - 3)`` (the paper's closed form).
  Large batch: ``lambda_inf = E[phi'(g)^2] / Var[phi(g)]`` with ``g ~ N(0, 1)``; for ReLU that is
  ``pi / (pi - 1) = 1.467``, the paper's ReLU value.
* :func:`ln_gradient_rate` is the same quantity for LayerNorm (statistics over features of one
  example, no batch coupling): ``lambda_LN = E[phi'(g)^2] / E[phi(g)^2]`` at large width, which is
  ``chi_1`` of a network whose pre-activation length is pinned to 1.
* :func:`norm_gradient_growth` measures the per-layer gradient norms of a deep network over
  seeds with :func:`gradjax.layer_gradient_norms` (exact, whole-batch ``jax.grad``, so BatchNorm's
  coupling is included) and :func:`fit_layer_growth` fits the per-layer factor.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from gradjax.meanfield.activations import (
    ActivationLike,
    activation_names,
    derivative,
    get_activation,
)
from gradjax.meanfield.gaussian import gaussian_expectation
from gradjax.measure.gradients import LossFn, get_loss, layer_gradient_norms, layer_gradients
from gradjax.measure.jacobians import jacobian
from gradjax.nets import layout
from gradjax.nets.models import Net, Params
from gradjax.utils.errors import GradjaxInputError, check_int, check_real, invalid
from gradjax.utils.fitting import log_slope
from gradjax.utils.pytree import pytree_dataclass, static_field

# ---------------------------------------------------------------- mean-field rates


def _check_activation(activation: ActivationLike) -> tuple[Callable, Callable]:
    act = get_activation(activation)
    return act.fn, derivative(act)


def bn_gradient_rate(
    activation: ActivationLike,
    *,
    batch_size: int | None = None,
    samples: int = 1 << 15,
    key: jax.Array | None = None,
) -> jax.Array:
    """Mean-field growth factor of ``||dL/da_l||^2`` per layer of a deep BatchNorm network.

    See the module docstring for the derivation. ``batch_size=None`` gives the large-batch
    limit ``E[phi'(g)^2] / Var[phi(g)]`` by quadrature; a finite ``B`` averages over ``u``
    uniform on the ``sqrt(B)``-sphere of the mean-zero subspace by Monte Carlo with ``samples``
    draws (a ratio estimator over common draws; relative error about ``1/sqrt(samples*B)``).

    Args:
      activation: a name from the activation table or an elementwise callable.
      batch_size: ``B >= 2``, or ``None`` for ``B -> infinity``. For ``B <= 3`` the expected
        inverse batch variance is infinite and so is the rate.
      samples: Monte Carlo draws for a finite batch.
      key: PRNG key for the Monte Carlo draws; default ``jax.random.key(0)`` (so the rate is
        a reproducible number).

    Returns:
      The factor ``lambda`` (> 1 means gradients grow towards the input), a scalar.

    Example:
      >>> import gradjax as gj
      >>> round(float(gj.normalization.bn_gradient_rate("relu")), 3)  # pi / (pi - 1) = 1.467
      1.467
    """
    phi, dphi = _check_activation(activation)
    check_int("samples", samples, minimum=16)
    if batch_size is None:
        mean = gaussian_expectation(phi)
        var = gaussian_expectation(lambda g: (phi(g) - mean) ** 2)
        return gaussian_expectation(lambda g: dphi(g) ** 2) / var
    check_int("batch_size", batch_size, minimum=2)
    if batch_size <= 3:
        return jnp.asarray(jnp.inf)
    key = jax.random.key(0) if key is None else key
    return _bn_rate_fn((activation,), batch_size, samples)(key)[0]


@functools.lru_cache(maxsize=128)
def _bn_rate_fn(activations: tuple[ActivationLike, ...], b: int, samples: int) -> Callable:
    # One compiled function per (activations, B, samples): a table row of activations shares
    # the draws and the compile, and a repeated call does not recompile.
    fns = [_check_activation(a) for a in activations]

    def rates(key: jax.Array) -> jax.Array:
        g = jax.random.normal(key, (samples, b))
        g = g - jnp.mean(g, axis=-1, keepdims=True)
        u = g * jnp.sqrt(b / jnp.sum(g**2, axis=-1, keepdims=True))  # uniform on the sphere
        return jnp.stack([_bn_rate_mc(phi, dphi, u) for phi, dphi in fns])

    return jax.jit(rates)


def _bn_rate_mc(phi: Callable, dphi: Callable, u: jax.Array) -> jax.Array:
    b = u.shape[-1]
    d = dphi(u)
    a = phi(u)
    s_d2 = jnp.sum(d**2, axis=-1)
    s_d = jnp.sum(d, axis=-1)
    s_d2u2 = jnp.sum((d * u) ** 2, axis=-1)
    s_du = jnp.sum(d * u, axis=-1)
    # tr(P D G D P) = tr(DGDG) - u^T DGD u / B, with DGD = D^2 - d d^T / B.
    trace = (1.0 - 2.0 / b) * s_d2 + s_d**2 / b**2 - (s_d2u2 - s_du**2 / b) / b
    v = jnp.mean((a - jnp.mean(a, axis=-1, keepdims=True)) ** 2, axis=-1)
    return jnp.mean(trace) / ((b - 3) * jnp.mean(v))


def ln_gradient_rate(activation: ActivationLike) -> jax.Array:
    """Mean-field growth factor of ``||dL/da_l||^2`` per layer of a wide LayerNorm network.

    LayerNorm pins each example's pre-activation length to 1, so the factor is ``chi_1`` at
    ``q = 1`` with the effective ``sigma_w^2 = 1 / E[phi(g)^2]``:
    ``E[phi'(g)^2] / E[phi(g)^2]`` (finite-width corrections are ``O(1/N)``).

    Args:
      activation: a name from the activation table or an elementwise callable.

    Returns:
      The factor, a scalar (1 for linear and ReLU).
    """
    phi, dphi = _check_activation(activation)
    return gaussian_expectation(lambda g: dphi(g) ** 2) / gaussian_expectation(
        lambda g: phi(g) ** 2
    )


@pytree_dataclass
class RateTable:
    """Mean-field per-layer growth factors of ``||dL/da_l||^2`` for every activation.

    Attributes:
      activations: the activation names (rows).
      batch_sizes: the finite batch sizes (columns of ``batch_norm``).
      batch_norm: ``(activation, batch size)`` BatchNorm factors.
      batch_norm_inf: ``(activation,)`` large-batch BatchNorm factors.
      layer_norm: ``(activation,)`` wide LayerNorm factors.
    """

    batch_norm: jax.Array
    batch_norm_inf: jax.Array
    layer_norm: jax.Array
    activations: tuple[str, ...] = static_field()
    batch_sizes: tuple[int, ...] = static_field()


def rate_table(
    *,
    batch_sizes: tuple[int, ...] = (8, 32, 128),
    activations: tuple[str, ...] | None = None,
    samples: int = 1 << 15,
    key: jax.Array | None = None,
) -> RateTable:
    """:func:`bn_gradient_rate` and :func:`ln_gradient_rate` for each activation in the table.

    Args:
      batch_sizes: finite batch sizes.
      activations: names; default the whole table.
      samples: Monte Carlo draws per finite-batch entry.
      key: PRNG key (the same draws for every entry).

    Returns:
      A :class:`RateTable`.
    """
    names = activation_names() if activations is None else tuple(activations)
    for name in names:
        get_activation(name)
    sizes = tuple(batch_sizes)
    for b in sizes:
        check_int("batch_sizes", b, minimum=2)
    check_int("samples", samples, minimum=16)
    key = jax.random.key(0) if key is None else key
    columns = [
        _bn_rate_fn(names, b, samples)(key) if b > 3 else jnp.full((len(names),), jnp.inf)
        for b in sizes
    ]
    return RateTable(
        batch_norm=jnp.stack(columns, axis=1).reshape(len(names), len(sizes)),
        batch_norm_inf=jnp.stack([bn_gradient_rate(n) for n in names]),
        layer_norm=jnp.stack([ln_gradient_rate(n) for n in names]),
        activations=names,
        batch_sizes=sizes,
    )


# ---------------------------------------------------------------- measurements


@pytree_dataclass
class NormStatistics:
    """Statistics of the normalised pre-activations ``u_l`` over the norm's own axis.

    Attributes:
      mean: ``(depth, N)`` per-feature batch means (BatchNorm) or ``(depth, B)`` per-example
        feature means (LayerNorm).
      var: the matching (biased) variances.
      axis: ``"batch"`` or ``"features"``: the axis the statistics were taken over.
    """

    mean: jax.Array
    var: jax.Array
    axis: str = static_field()


def norm_statistics(net: Net, params: Params, x: jax.Array) -> NormStatistics:
    """Mean and variance of every block's normalised pre-activation ``u_l``.

    At initialisation (``gamma = 1``, ``beta = 0``) BatchNorm gives mean 0 and variance
    ``v/(v + eps)`` per feature over the batch; LayerNorm the same per example over features.

    Args:
      net: a network with ``norm="batch"`` or ``"layer"``.
      params: its parameters.
      x: ``(batch, input_dim)``.

    Returns:
      A :class:`NormStatistics`.
    """
    if net.cfg.norm is None:
        raise invalid("net.cfg.norm", None, "'batch' or 'layer' (a network with a norm)")
    if jnp.ndim(x) != 2:
        raise invalid("x.shape", jnp.shape(x), f"(batch, {net.cfg.input_dim})")
    u = net.forward(params, x).normed  # (L, B, N)
    axis = 1 if net.cfg.norm == "batch" else 2
    return NormStatistics(
        mean=jnp.mean(u, axis=axis),
        var=jnp.var(u, axis=axis),
        axis="batch" if axis == 1 else "features",
    )


@pytree_dataclass
class ScaleInvariance:
    """What scaling one block's ``(W_l, b_l)`` by ``c`` changed.

    Attributes:
      c: the scale factor.
      jacobian_rel_change: ``||J(c) - J(1)|| / ||J(1)||`` of the block's whole-batch Jacobian
        ``dA_l/dA_{l-1}`` (whole-batch: BatchNorm couples examples).
      output_rel_change: relative change of the network output.
      loss_rel_change: relative change of the loss.
      grad_ratio: ``||dL/dW_l(c)|| / ||dL/dW_l(1)||`` (``1/c`` if invariant).
      grad_rel_err: ``||c dL/dW_l(c) - dL/dW_l(1)|| / ||dL/dW_l(1)||`` (0 if invariant).
      layer: the block index (0 = input block).
      batch_coupled: whether the Jacobian is of the whole batch map (always ``True`` here).
    """

    c: jax.Array
    jacobian_rel_change: jax.Array
    output_rel_change: jax.Array
    loss_rel_change: jax.Array
    grad_ratio: jax.Array
    grad_rel_err: jax.Array
    layer: int = static_field()
    batch_coupled: bool = static_field(default=True)


def scale_block(net: Net, params: Params, *, layer: int, c: float | jax.Array) -> Params:
    """Returns ``params`` with block ``layer``'s ``W`` and ``b`` multiplied by ``c``.

    Args:
      net: the network.
      params: its parameters.
      layer: block index, 0 (input block) to ``depth - 1``.
      c: the factor (may be traced).

    Returns:
      New parameters; the others are shared, not copied.
    """
    _check_layer(net, layer)
    return layout.scale_layer(params, layer, jnp.asarray(c, net.dtype), ("W", "b"))


def _check_layer(net: Net, layer: int) -> None:
    # From the configuration, so a bad index fails before any parameter is read.
    depth = net.cfg.depth
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < depth:
        raise invalid("layer", layer, f"a block index in [0, {depth})")


def scale_invariance(
    net: Net,
    params: Params,
    x: jax.Array,
    y: jax.Array,
    *,
    layer: int,
    c: float | jax.Array,
    loss: str | LossFn = "mse",
) -> ScaleInvariance:
    """Checks that a normalised block is invariant to the scale of its affine map.

    Scales ``(W_l, b_l)`` by ``c`` (the bias too, because LayerNorm does not subtract a
    per-feature bias; BatchNorm removes it either way) and compares the block's whole-batch
    Jacobian, the output, the loss and ``dL/dW_l`` with the unscaled network. With a norm all
    changes are ``O(norm_eps / Var z)``; without one they are ``O(c - 1)``.

    Args:
      net: the network (any norm, or none to see the violation).
      params: its parameters.
      x: ``(batch, input_dim)``.
      y: targets for ``loss``.
      layer: block index (0 = input block).
      c: the scale factor, > 0.
      loss: a loss name or callable.

    Returns:
      A :class:`ScaleInvariance`.
    """
    if not isinstance(c, jax.Array):
        check_real("c", c, strictly_positive=True)
    if jnp.ndim(x) != 2:
        raise invalid("x.shape", jnp.shape(x), f"(batch, {net.cfg.input_dim})")
    _check_layer(net, layer)
    get_loss(loss)
    net.check_input(x)
    return _scale_invariance_fn(net, layer, loss)(params, x, y, jnp.asarray(c, net.dtype))


@functools.lru_cache(maxsize=64)
def _scale_invariance_fn(net: Net, layer: int, loss: str | LossFn) -> Callable:
    # One compiled function per (net, layer, loss): c, the parameters and the data are traced.
    residual = layer > 0

    def run(params: Params, x: jax.Array, y: jax.Array, c: jax.Array) -> ScaleInvariance:
        scaled = scale_block(net, params, layer=layer, c=c)
        x = jnp.asarray(x, net.dtype)
        a_prev = x if layer == 0 else net.forward(params, x).act[layer - 1]

        def block_jac(p: Params) -> jax.Array:
            lp = net.layer_params(p, layer)
            return jacobian(lambda a: net.block(lp, a, residual=residual)[2], a_prev)

        rel = lambda new, old: jnp.linalg.norm(new - old) / jnp.linalg.norm(old)
        g0 = layer_gradients(net, params, x, y, loss=loss)
        g1 = layer_gradients(net, scaled, x, y, loss=loss)
        pick = lambda g: layout.layer_weight(g.params, layer)
        w0, w1 = pick(g0), pick(g1)
        return ScaleInvariance(
            c=c,
            jacobian_rel_change=rel(block_jac(scaled), block_jac(params)),
            output_rel_change=rel(net.apply(scaled, x), net.apply(params, x)),
            loss_rel_change=jnp.abs(g1.loss - g0.loss) / jnp.abs(g0.loss),
            grad_ratio=jnp.linalg.norm(w1) / jnp.linalg.norm(w0),
            grad_rel_err=rel(c * w1, w0),
            layer=layer,
        )

    return jax.jit(run)


@pytree_dataclass
class GrowthFit:
    """A per-layer geometric growth factor fitted to gradient norms.

    Attributes:
      rate: factor of ``||g_l||^2`` per layer towards the input, ``exp(-slope)`` of the fit of
        ``log ||g_l||^2`` against ``l`` (> 1: exploding towards the input).
      slope: the fitted slope of ``log ||g_l||^2`` against the layer index.
      intercept: the fitted intercept.
      first: first fitted layer index (0-based).
      last: last fitted layer index (exclusive).
    """

    rate: jax.Array
    slope: jax.Array
    intercept: jax.Array
    first: int = static_field()
    last: int = static_field()


def fit_layer_growth(
    norms: jax.Array, *, first: int | None = None, last: int | None = None
) -> GrowthFit:
    """Fits ``log ||g_l||^2 = intercept + slope * l`` over layers ``[first, last)``.

    Leading axes (seeds) are averaged in log space first (a geometric mean), so a seed that
    blew up to ``inf`` makes the fit ``nan``/``inf``, recorded rather than raised. The default
    window drops the first and last fifth of the layers: the transient to the mean-field fixed
    point and the layers next to the readout.

    Args:
      norms: ``(..., depth)`` gradient norms (not squared).
      first: first layer in the fit (default ``depth // 5``).
      last: end of the fit window (default ``depth - depth // 5``).

    Returns:
      A :class:`GrowthFit`.
    """
    norms = np.asarray(norms, np.float64)
    depth = norms.shape[-1]
    first = depth // 5 if first is None else first
    last = depth - depth // 5 if last is None else last
    check_int("first", first, minimum=0, maximum=depth - 2)
    check_int("last", last, minimum=first + 2, maximum=depth)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(norms**2).reshape(-1, depth).mean(axis=0)[first:last]
    layers = np.arange(first, last, dtype=np.float64)
    # A seed that blew up (inf/NaN/0 norms) makes the fit NaN rather than dropping layers.
    slope = log_slope(layers, np.exp(logs)) if np.all(np.isfinite(logs)) else np.nan
    intercept = np.mean(logs) - slope * np.mean(layers)
    return GrowthFit(
        rate=jnp.asarray(np.exp(-slope)),
        slope=jnp.asarray(slope),
        intercept=jnp.asarray(intercept),
        first=first,
        last=last,
    )


@pytree_dataclass
class NormGrowth:
    """Per-layer gradient norms of a network at initialisation, over seeds.

    Attributes:
      activations: ``||dL/da_l||`` over the whole batch, ``(seeds, depth)``.
      weights: ``||dL/dW_l||``, ``(seeds, depth)``.
      fit: :class:`GrowthFit` of ``activations``.
      batch: the batch size.
    """

    activations: jax.Array
    weights: jax.Array
    fit: GrowthFit
    batch: int = static_field()


@functools.lru_cache(maxsize=64)
def _growth_fn(net: Net, batch: int, loss: str | LossFn) -> Callable:
    def one(key: jax.Array):
        kp, kx, ky = jax.random.split(key, 3)
        params = net.init(kp)
        x = jax.random.normal(kx, (batch, net.cfg.input_dim), net.dtype)
        y = jax.random.normal(ky, (batch, net.cfg.out_dim), net.dtype)
        g = layer_gradient_norms(net, params, x, y, loss=loss)
        return g.activations, g.weights

    return jax.jit(jax.vmap(one))


def norm_gradient_growth(
    net: Net,
    key: jax.Array,
    *,
    batch: int,
    seeds: int = 4,
    loss: str | LossFn = "mse",
    first: int | None = None,
    last: int | None = None,
) -> NormGrowth:
    """Measures per-layer gradient norms of ``net`` at initialisation and fits their growth.

    Each seed draws parameters, a Gaussian input batch ``x ~ N(0, I)`` and Gaussian targets;
    the norms are exact (``jax.grad`` of the whole-batch loss, so BatchNorm's coupling of the
    examples is included). Compare ``fit.rate`` with :func:`bn_gradient_rate` /
    :func:`ln_gradient_rate`.

    Args:
      net: the network (typically deep, with ``norm="batch"`` or ``"layer"``).
      key: PRNG key.
      batch: batch size (``>= 2`` for BatchNorm).
      seeds: number of independent draws.
      loss: a loss name or callable.
      first: first layer of the fit window (see :func:`fit_layer_growth`).
      last: end of the fit window.

    Returns:
      A :class:`NormGrowth`.

    Example:
      >>> import jax, gradjax as gj
      >>> net = gj.build(gj.NetConfig(depth=50, width=128, activation="relu", norm="batch"))
      >>> m = gj.normalization.norm_gradient_growth(net, jax.random.key(0), batch=64)
      >>> theory = gj.normalization.bn_gradient_rate("relu", batch_size=64)  # about 1.50
      >>> bool(abs(m.fit.rate / theory - 1) < 0.05)
      True
    """
    check_int("batch", batch, minimum=1)
    check_int("seeds", seeds, minimum=1)
    get_loss(loss)
    if net.cfg.norm == "batch" and batch < 2:
        raise GradjaxInputError(
            f"batch={batch} is invalid: norm='batch' needs a batch of at least 2 examples "
            "(the batch variance of one example is undefined)"
        )
    acts, weights = _growth_fn(net, batch, loss)(jax.random.split(key, seeds))
    return NormGrowth(
        activations=acts,
        weights=weights,
        fit=fit_layer_growth(acts, first=first, last=last),
        batch=batch,
    )
