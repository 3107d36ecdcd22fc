"""Residual stacks: the identity path of the gradient and the forward variance against depth.

Claim C12 of the article: residual blocks ``a_l = a_{l-1} + g F_l(a_{l-1})`` pass the gradient
straight to shallow layers. Backward, ``dL/da_{l-1} = dL/da_l (I + g dF_l/da_{l-1})``, and
telescoping over the blocks above ``l`` gives the exact decomposition::

    dL/da_l = dL/da_L  +  sum_{k > l} g_k dL/da_k dF_k/da_{k-1}
              (identity path)   (branch paths)

so the top gradient reaches every layer undiminished through the skips
(:func:`identity_path`). The price is paid forward: each block adds the branch's variance, so
an unscaled stack's signal grows with depth. The mean-field recursion for the per-unit second
moment ``q_l = E[a_l^2]`` and mean ``m_l = E[a_l]`` (wide layers, zero-mean weights, so the
branch is independent of the unit it is added to)::

    q_l = q_{l-1} + 2 g m_{l-1} E[phi(u_l)] + g^2 E[phi(u_l)^2],   m_l = m_{l-1} + g E[phi(u_l)]

with ``u_l ~ N(0, sigma_w^2 q_{l-1} + sigma_b^2)`` without a norm and ``u_l ~ N(0, 1)`` with
BatchNorm/LayerNorm (the norm pins the branch input). Closed forms follow:

* linear, no norm: ``q_l = (1 + g^2 sigma_w^2) q_{l-1} + g^2 sigma_b^2``, exponential growth
  (:func:`linear_residual_variance`); ReLU: the factor is ``1 + g^2 sigma_w^2 / 2`` plus the
  mean term;
* with a norm: ``q_l`` grows *linearly* in depth, by ``g^2 E[phi(g)^2]`` (+ the mean term) per
  block;
* ``g = alpha = 1/sqrt(L)`` keeps the total growth bounded (``e^{sigma_w^2}`` for linear);
  SkipInit's ``g = 0`` makes the stack the identity at initialisation.

The gradient gets the matching factor per block, ``E||dL/da_{l-1}||^2 = E||dL/da_l||^2
(1 + g^2 chi_F)`` with the branch's ``chi_F = sigma_w^2 E[phi'(u)^2]`` (no norm) or
``E[phi'(g)^2] / Var_l`` (norm; ``Var_l`` the variance the norm divides by), from gradient
independence; :func:`residual_theory` returns both profiles.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from gradjax.activations import derivative, get_activation
from gradjax.config import RESIDUAL_KINDS, NetConfig
from gradjax.errors import check_choice, check_int, check_real, invalid
from gradjax.gradients import LossFn, get_loss, layer_gradients
from gradjax.models import Net, Params
from gradjax.normalization import gaussian_expectation
from gradjax.results import pytree_dataclass, static_field

# ---------------------------------------------------------------- theory


@pytree_dataclass
class ResidualTheory:
    """Mean-field profiles of a residual stack at initialisation.

    Attributes:
      second_moment: ``q_l = E[a_l^2]`` per unit for blocks 1..depth, ``(depth,)``.
      mean: ``m_l = E[a_l]`` per unit, ``(depth,)``.
      grad_ratio: ``E||dL/da_l||^2 / E||dL/da_L||^2`` for blocks 1..depth (1 at the top).
      gain: the branch gain ``g`` used (0 for SkipInit at initialisation).
      norm: the norm kind (``None``, ``"batch"``, ``"layer"``).
    """

    second_moment: jax.Array
    mean: jax.Array
    grad_ratio: jax.Array
    gain: float = static_field()
    norm: str | None = static_field()


def _branch_gain(cfg: NetConfig) -> float:
    # SkipInit's learnable gain is 0 at initialisation; a non-residual stack has no skip and
    # is not covered by the residual recursion.
    return 0.0 if cfg.residual == "skipinit" else cfg.alpha


def residual_theory(cfg: NetConfig, *, input_second_moment: float = 1.0) -> ResidualTheory:
    """Mean-field forward second moment and gradient profile of a residual config.

    Args:
      cfg: a config with ``residual`` set (``plain``, ``scaled`` or ``skipinit``); its
        ``init`` must be ``gaussian`` or ``orthogonal`` (the same second moments) so that
        ``sigma_w`` is the weight scale.
      input_second_moment: ``E[x_i^2]`` of the input (1 for ``x ~ N(0, I)``).

    Returns:
      A :class:`ResidualTheory`. Gradient ratios assume the gradient-independence
      approximation; BatchNorm's ratio is its large-batch value.

    Example:
      >>> import gradjax as gj
      >>> cfg = gj.NetConfig(depth=20, width=256, activation="linear", residual="plain")
      >>> round(float(gj.residual_theory(cfg).second_moment[-1]))  # 2^19 for sigma_w = 1
      524288
    """
    if not isinstance(cfg, NetConfig):
        raise invalid("cfg", cfg, "a gradjax.NetConfig")
    check_choice("cfg.residual", cfg.residual, [k for k in RESIDUAL_KINDS if k is not None])
    check_choice("cfg.init", cfg.init, ("gaussian", "orthogonal"))
    check_real("input_second_moment", input_second_moment, minimum=0.0)
    phi = get_activation(cfg.activation).fn
    dphi = derivative(cfg.activation)
    gauss = lambda f, s: gaussian_expectation(lambda t: f(s * t))  # E[f(s g)], g ~ N(0, 1)
    sw2, sb2 = float(cfg.sigma_w) ** 2, float(cfg.sigma_b) ** 2
    g = _branch_gain(cfg)
    normed = cfg.norm is not None

    def branch(q):
        # Standard deviation of the branch's activation input u_l.
        s = jnp.ones_like(q) if normed else jnp.sqrt(sw2 * q + sb2)
        e1, e2 = gauss(phi, s), gauss(lambda t: phi(t) ** 2, s)
        return s, e1, e2

    s1, e1, e2 = branch(jnp.asarray(input_second_moment, jnp.result_type(float)))
    q1, m1 = e2, e1  # block 1 is never residual

    def step(carry, _):
        q, m = carry
        s, b1, b2 = branch(q)
        dphi2 = gauss(lambda t: dphi(t) ** 2, s)
        if cfg.norm is None:
            chi = sw2 * dphi2
        elif cfg.norm == "layer":
            # LayerNorm divides by the feature spread of z: sigma_w^2 q + sigma_b^2.
            chi = sw2 * dphi2 / (sw2 * q + sb2)
        else:
            # BatchNorm divides by the batch spread of z: sigma_w^2 (q - m^2) (the bias and
            # every unit's common mean are removed by the batch mean).
            chi = dphi2 / jnp.maximum(q - m**2, jnp.finfo(q.dtype).tiny)
        q_next = q + 2.0 * g * m * b1 + g**2 * b2
        return (q_next, m + g * b1), (q_next, m + g * b1, 1.0 + g**2 * chi)

    _, (qs, ms, factors) = jax.lax.scan(step, (q1, m1), None, length=cfg.depth - 1)
    q_all = jnp.concatenate([q1[None], qs])
    m_all = jnp.concatenate([m1[None], ms])
    # dL/da_{l-1} = dL/da_l (I + g J_l): the factor of block l multiplies every layer below it.
    grad_ratio = jnp.concatenate([jnp.cumprod(factors[::-1])[::-1], jnp.ones((1,), factors.dtype)])
    return ResidualTheory(
        second_moment=q_all, mean=m_all, grad_ratio=grad_ratio, gain=g, norm=cfg.norm
    )


def linear_residual_variance(
    depth: int,
    *,
    alpha: float,
    sigma_w: float = 1.0,
    sigma_b: float = 0.0,
    first: float = 1.0,
) -> np.ndarray:
    """Closed form ``E[a_l^2]`` of a linear residual stack ``a_l = a_{l-1} + alpha (W a + b)``.

    ``E||(I + alpha W) a||^2 = (1 + alpha^2 sigma_w^2) ||a||^2`` for ``W ~ N(0, sigma_w^2/N)``,
    so ``q_l = r^{l-1} q_1 + alpha^2 sigma_b^2 (r^{l-1} - 1)/(r - 1)`` with
    ``r = 1 + alpha^2 sigma_w^2``.

    Args:
      depth: number of blocks (the first is not residual).
      alpha: branch gain (>= 0).
      sigma_w: weight scale.
      sigma_b: bias standard deviation.
      first: ``q_1``, the second moment of the first block's output.

    Returns:
      ``(depth,)`` float64 array of ``q_l``.
    """
    check_int("depth", depth, minimum=1)
    check_real("alpha", alpha, minimum=0.0)
    check_real("sigma_w", sigma_w, minimum=0.0)
    check_real("sigma_b", sigma_b, minimum=0.0)
    check_real("first", first, minimum=0.0)
    r = 1.0 + alpha**2 * sigma_w**2
    k = np.arange(depth, dtype=np.float64)
    geo = k if r == 1.0 else (r**k - 1.0) / (r - 1.0)
    return r**k * first + alpha**2 * sigma_b**2 * geo


# ---------------------------------------------------------------- measurements


@pytree_dataclass
class IdentityPath:
    """The gradient at every block split into the identity path and the branch paths.

    ``total_l = identity_l + branch_l`` exactly, as vectors; the fields hold their norms.

    Attributes:
      total: ``||dL/da_l||`` over the whole batch, ``(depth,)``.
      identity: ``||dL/da_L||`` where every block above ``l`` has a skip (all residual blocks),
        0 without a skip connection, ``(depth,)``.
      branch: ``||dL/da_l - identity term||``, ``(depth,)``.
      cosine: cosine between ``dL/da_l`` and ``dL/da_L``, ``(depth,)``.
      residual: the config's residual kind.
    """

    total: jax.Array
    identity: jax.Array
    branch: jax.Array
    cosine: jax.Array
    residual: str | None = static_field()


def identity_path(
    net: Net, params: Params, x: jax.Array, y: jax.Array, *, loss: str | LossFn = "mse"
) -> IdentityPath:
    """Splits ``dL/da_l`` into the identity-path term ``dL/da_L`` and the branch paths.

    Exact (one ``jax.grad`` pass; BatchNorm's batch coupling is inside the branch term).

    Args:
      net: the network; a non-residual one has no identity path (its ``identity`` is 0).
      params: its parameters.
      x: ``(batch, input_dim)`` or ``(input_dim,)``.
      y: targets for ``loss``.
      loss: a loss name or callable.

    Returns:
      An :class:`IdentityPath`.
    """
    grads = layer_gradients(net, params, x, y, loss=loss).activations  # (L, ..., N)
    flat = grads.reshape(grads.shape[0], -1)
    top = flat[-1]
    if net.cfg.residual is None:
        ident = jnp.zeros_like(flat).at[-1].set(top)
    else:
        ident = jnp.broadcast_to(top, flat.shape)
    norm = lambda v: jnp.sqrt(jnp.sum(v**2, axis=-1))
    total = norm(flat)
    denom = total * norm(top)
    cosine = jnp.sum(flat * top, axis=-1) / jnp.where(denom > 0, denom, 1.0)
    return IdentityPath(
        total=total,
        identity=norm(ident),
        branch=norm(flat - ident),
        cosine=cosine,
        residual=net.cfg.residual,
    )


def branch_path_sum(
    net: Net, params: Params, x: jax.Array, y: jax.Array, *, loss: str | LossFn = "mse"
) -> jax.Array:
    """The branch-path term ``sum_{k>l} g_k dL/da_k dF_k/da_{k-1}``, one VJP per block.

    An independent computation of ``dL/da_l - dL/da_L`` (from per-block VJPs of the branches
    alone, not from the network's backward pass), used to check the decomposition of
    :func:`identity_path`.

    Args:
      net: a residual network.
      params: its parameters.
      x: ``(batch, input_dim)`` or ``(input_dim,)``.
      y: targets.
      loss: a loss name or callable.

    Returns:
      ``(depth, ..., width)``: the branch-path term for every block output ``a_l``.
    """
    if net.cfg.residual is None:
        raise invalid("net.cfg.residual", None, "'plain', 'scaled' or 'skipinit'")
    grads = layer_gradients(net, params, x, y, loss=loss).activations
    acts = net.forward(params, x).act

    def one(layer, a_prev, delta):
        # The block output minus its skip is g * F(a_prev); its VJP is g dL/da_k dF/da.
        branch = lambda a: net.block(layer, a, residual=True)[2] - a
        return jax.vjp(branch, a_prev)[1](delta)[0]

    terms = jax.vmap(one)(params["hidden"], acts[:-1], grads[1:])  # term of block k+1 at a_k
    # Sum over every block strictly above l: a reversed cumulative sum, 0 at the top.
    above = jnp.cumsum(terms[::-1], axis=0)[::-1]
    return jnp.concatenate([above, jnp.zeros_like(grads[:1])], axis=0)


@pytree_dataclass
class ResidualProfile:
    """Measured forward and backward profiles of a network over seeds.

    Attributes:
      second_moment: ``E[a_l^2]`` over batch and units, ``(seeds, depth)``.
      grad: ``||dL/da_l||`` over the whole batch, ``(seeds, depth)``.
      identity: ``||dL/da_L||`` per seed, ``(seeds,)`` (the identity-path term).
      batch: the batch size.
    """

    second_moment: jax.Array
    grad: jax.Array
    identity: jax.Array
    batch: int = static_field()


def _profile_one(net: Net, batch: int, loss: str | LossFn, key: jax.Array, gain=None):
    kp, kx, ky = jax.random.split(key, 3)
    params = net.init(kp)
    if gain is not None:
        # SkipInit's learnable gain set to a value: x + g F(x) for any g with one compile.
        params["hidden"]["gain"] = jnp.full_like(params["hidden"]["gain"], gain)
    x = jax.random.normal(kx, (batch, net.cfg.input_dim), net.dtype)
    y = jax.random.normal(ky, (batch, net.cfg.out_dim), net.dtype)
    loss_fn = get_loss(loss)
    eps = jnp.zeros((net.cfg.depth, batch, net.cfg.width), net.dtype)

    def objective(e):
        # One forward pass gives the loss and the block outputs; its gradient with respect to
        # zero perturbations of the block outputs is dL/da_l (as in layer_gradients).
        trace = net.forward(params, x, perturbations=e)
        return loss_fn(trace.output, y), trace.act

    (_, acts), g_act = jax.value_and_grad(objective, has_aux=True)(eps)
    flat = g_act.reshape(net.cfg.depth, -1)
    norms = jnp.sqrt(jnp.sum(flat**2, axis=-1))
    return jnp.mean(acts**2, axis=(1, 2)), norms, norms[-1]


@functools.lru_cache(maxsize=64)
def _profile_fn(net: Net, batch: int, loss: str | LossFn) -> Callable:
    return jax.jit(jax.vmap(functools.partial(_profile_one, net, batch, loss)))


@functools.lru_cache(maxsize=64)
def _gain_profile_fn(net: Net, batch: int, loss: str | LossFn) -> Callable:
    one = functools.partial(_profile_one, net, batch, loss)
    over_seeds = jax.vmap(one, in_axes=(0, None))
    return jax.jit(jax.vmap(over_seeds, in_axes=(None, 0)))


def _check_profile_args(net: Net, batch: int, seeds: int, loss: str | LossFn) -> None:
    if not isinstance(net, Net):
        raise invalid("net", net, "a gradjax.Net")
    check_int("batch", batch, minimum=1)
    check_int("seeds", seeds, minimum=1)
    get_loss(loss)
    net.check_input(jnp.zeros((batch, net.cfg.input_dim), net.dtype))


def residual_profile(
    net: Net,
    key: jax.Array,
    *,
    batch: int,
    seeds: int = 4,
    loss: str | LossFn = "mse",
) -> ResidualProfile:
    """Measures forward second moments and gradient norms per block, over seeds.

    Each seed draws parameters, ``x ~ N(0, I)`` and Gaussian targets. Works for any
    network (plain or residual, with or without a norm), so stacks can be compared. Blow-up
    to ``inf``/``nan`` is returned as data.

    Args:
      net: the network.
      key: PRNG key.
      batch: batch size (``>= 2`` with BatchNorm).
      seeds: number of draws.
      loss: a loss name or callable.

    Returns:
      A :class:`ResidualProfile` with a leading seed axis; compare with
      :func:`residual_theory`.
    """
    _check_profile_args(net, batch, seeds, loss)
    m2, grads, top = _profile_fn(net, batch, loss)(jax.random.split(key, seeds))
    return ResidualProfile(second_moment=m2, grad=grads, identity=top, batch=batch)


def gain_profile(
    net: Net,
    key: jax.Array,
    *,
    gains: jax.Array,
    batch: int,
    seeds: int = 4,
    loss: str | LossFn = "mse",
) -> ResidualProfile:
    """:func:`residual_profile` of a SkipInit stack with its gain set to each of ``gains``.

    ``x + g F(x)`` with ``g = 1`` is the plain residual block, ``g = alpha`` the scaled one and
    ``g = 0`` SkipInit at initialisation, with the same weight draws (the same key gives the
    same ``W`` as the ``plain``/``scaled`` configs) and one compiled function for all gains.

    Args:
      net: a network with ``residual="skipinit"``.
      key: PRNG key (the same draws for every gain).
      gains: ``(G,)`` branch gains.
      batch: batch size.
      seeds: number of draws.
      loss: a loss name or callable.

    Returns:
      A :class:`ResidualProfile` with leading axes ``(gain, seed)``.
    """
    if not isinstance(net, Net) or net.cfg.residual != "skipinit":
        raise invalid(
            "net.cfg.residual",
            getattr(getattr(net, "cfg", None), "residual", net),
            "'skipinit' (a stack with a settable gain)",
        )
    _check_profile_args(net, batch, seeds, loss)
    gains = jnp.atleast_1d(jnp.asarray(gains, net.dtype))
    if gains.ndim != 1:
        raise invalid("gains.shape", gains.shape, "(G,)")
    m2, grads, top = _gain_profile_fn(net, batch, loss)(jax.random.split(key, seeds), gains)
    return ResidualProfile(second_moment=m2, grad=grads, identity=top, batch=batch)
