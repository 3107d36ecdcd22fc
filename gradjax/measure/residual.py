"""Residual stacks: the identity path of the gradient and the forward variance against depth.

Claim C12 of the article: residual blocks pass the gradient straight to shallow layers. The
article writes the block as ``y = x + F(x)``, ``x' = ReLU(y)`` (the original ResNet, here
``residual_block="post"``) and then uses ``x_L = x_l + sum_k F(x_k)``, which holds only when
nothing follows the addition: the pre-activation block ``a_l = a_{l-1} + g F(a_{l-1})`` whose
branch ends in a linear map (``"pre"``, He et al. 2016b). For it, telescoping the backward
pass ``dL/da_{l-1} = dL/da_l (I + g dF_l/da_{l-1})`` gives the exact decomposition::

    dL/da_l = dL/da_L  +  sum_{k > l} g dL/da_k dF_k/da_{k-1}
              (identity path)   (branch paths)

(:func:`identity_path`, :func:`branch_path_sum`). In a ``post`` block the activation after
the addition multiplies every path by its derivative mask, so the same formula misses the
true gradient; :class:`IdentityPath` records by how much.

The price is paid forward: every block adds the branch's variance. Mean-field recursions for
the per-unit second moment ``q_l = E[a_l^2]`` and mean ``m_l = E[a_l]`` (wide layers,
zero-mean weights, so a branch is independent of the unit it is added to), with
``E_s[f] = E[f(s t)]``, ``t ~ N(0, 1)``:

* ``pre``: the stream stays a zero-mean Gaussian (linear stem, branches ending in a zero-mean
  linear map): ``q_l = q_{l-1} + g^2 v_F`` with ``v_F = sigma_w^2 E_s[phi^2] + sigma_b^2``,
  ``s = sqrt(q_{l-1})`` (1 behind a norm), applied once per weight layer. ReLU at He init
  (``sigma_w^2 = 2``, ``sigma_b = 0``) gives ``v_F = q`` and exactly 2x per block unscaled;
  with a norm in the branch, ``q`` grows linearly instead.
* ``post``: ``a_l = phi(a_{l-1} + g sqrt(v_F) t)``, where ``a_{l-1}`` is not Gaussian (ReLU
  outputs are >= 0), so the recursion carries the unit's whole law, as weighted atoms
  propagated through a Gauss-Hermite rule and merged back into equal-mass bins each block.
* ``act_branch`` (``a_{l-1} + g phi(Norm(W a + b))``): ``q_l = q_{l-1} + 2 g m_{l-1} E_s[phi]
  + g^2 E_s[phi^2]``, ``m_l = m_{l-1} + g E_s[phi]``, ``s^2 = sigma_w^2 q_{l-1} +
  sigma_b^2``: the branch's mean adds up, so ReLU grows faster than ``pre``.

Backward, from gradient independence, ``E||dL/da_{l-1}||^2 = E||dL/da_l||^2 r_l`` with
``r_l = 1 + g^2 chi_F`` (``pre``, ``act_branch``) or ``E[phi'(y_l)^2] (1 + g^2 chi_F)``
(``post``), where ``chi_F`` is the branch's mean squared Jacobian factor: ``sigma_w^2
E_s[phi'^2]`` per weight layer, divided by the variance a norm divides by.
:func:`residual_theory` returns both profiles; ``g = 1/sqrt(L)`` keeps the total growth
bounded and SkipInit's ``g = 0`` makes the stack the identity at initialisation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from gradjax.meanfield.activations import derivative, get_activation
from gradjax.meanfield.gaussian import gaussian_expectation
from gradjax.measure.gradients import LossFn, get_loss, layer_gradients
from gradjax.nets import layout
from gradjax.nets.config import RESIDUAL_KINDS, NetConfig
from gradjax.nets.models import Net, Params
from gradjax.utils.errors import check_choice, check_int, check_real, invalid
from gradjax.utils.pytree import pytree_dataclass, static_field

# ---------------------------------------------------------------- theory

# The law of a post-activation stream unit: atoms merged into this many equal-mass bins per
# block, each spread by a Gauss-Hermite rule of this order (moments to ~1e-4 relative).
_POST_ATOMS = 4096
_POST_NODES = 32


@pytree_dataclass
class ResidualTheory:
    """Mean-field profiles of a residual stack at initialisation.

    Attributes:
      second_moment: ``q_l = E[a_l^2]`` per unit for blocks 1..depth, ``(depth,)``.
      mean: ``m_l = E[a_l]`` per unit, ``(depth,)``.
      grad_ratio: ``E||dL/da_l||^2 / E||dL/da_L||^2`` for blocks 1..depth (1 at the top).
      gain: the branch gain ``g`` used (0 for SkipInit at initialisation).
      norm: the norm kind (``None``, ``"batch"``, ``"layer"``).
      block: the residual block (``"pre"``, ``"post"`` or ``"act_branch"``).
    """

    second_moment: jax.Array
    mean: jax.Array
    grad_ratio: jax.Array
    gain: float = static_field()
    norm: str | None = static_field()
    block: str = static_field(default="pre")


def _branch_gain(cfg: NetConfig) -> float:
    # SkipInit's learnable gain is 0 at initialisation; a non-residual stack has no skip and
    # is not covered by the residual recursion.
    return 0.0 if cfg.residual == "skipinit" else cfg.alpha


def residual_theory(cfg: NetConfig, *, input_second_moment: float = 1.0) -> ResidualTheory:
    """Mean-field forward second moment and gradient profile of a residual config.

    Args:
      cfg: a config with ``residual`` set (``plain``, ``scaled`` or ``skipinit``), any
        ``residual_block`` and ``branch_layers``; its ``init`` must be ``gaussian`` or
        ``orthogonal`` (the same second moments) so that ``sigma_w`` is the weight scale.
      input_second_moment: ``E[x_i^2]`` of the input (1 for ``x ~ N(0, I)``).

    Returns:
      A :class:`ResidualTheory`. Gradient ratios assume the gradient-independence
      approximation; BatchNorm's ratio is its large-batch value.

    Example:
      >>> import gradjax as gj
      >>> cfg = gj.NetConfig(depth=11, width=256, activation="relu", sigma_w=2**0.5,
      ...                    residual="plain")  # pre-activation, He init: 2x per block
      >>> round(float(gj.residual.residual_theory(cfg).second_moment[-1] / 2))  # q_1 = 2
      1024
    """
    if not isinstance(cfg, NetConfig):
        raise invalid("cfg", cfg, "a gradjax.NetConfig")
    check_choice("cfg.residual", cfg.residual, [k for k in RESIDUAL_KINDS if k is not None])
    check_choice("cfg.init", cfg.init, ("gaussian", "orthogonal"))
    check_real("input_second_moment", input_second_moment, minimum=0.0)
    phi = get_activation(cfg.activation).fn
    dphi = derivative(cfg.activation)
    sw2, sb2 = float(cfg.sigma_w) ** 2, float(cfg.sigma_b) ** 2
    g = _branch_gain(cfg)
    normed = cfg.norm is not None
    dtype = jnp.result_type(float)
    gauss = lambda f, s: gaussian_expectation(lambda t: f(s * t), dtype=dtype)

    def layer(v_in):
        # One weight layer behind phi(Norm(.)) of an input of variance v_in: the variance of
        # its output and its mean squared Jacobian factor.
        s = jnp.ones_like(v_in) if normed else jnp.sqrt(v_in)
        v_out = sw2 * gauss(lambda t: phi(t) ** 2, s) + sb2
        chi = sw2 * gauss(lambda t: dphi(t) ** 2, s)
        return v_out, chi / v_in if normed else chi

    q_in = jnp.asarray(input_second_moment, dtype)
    v_stem = sw2 * q_in + sb2
    kind, two = cfg.residual_block, cfg.branch_layers == 2
    if kind == "post":
        q_all, m_all, grad_ratio = _post_recursion(cfg, phi, dphi, v_stem, g, two, sw2, sb2)
    else:
        if kind == "pre":
            q_all, m_all, factors = _pre_recursion(cfg, layer, v_stem, g, two)
        else:
            q_all, m_all, factors = _act_branch_recursion(cfg, phi, dphi, gauss, v_stem, g)
        # dL/da_{l-1} = dL/da_l (I + g J_l): block l's factor multiplies every layer below.
        ones = jnp.ones((1,), factors.dtype)
        grad_ratio = jnp.concatenate([jnp.cumprod(factors[::-1])[::-1], ones])
    return ResidualTheory(
        second_moment=q_all, mean=m_all, grad_ratio=grad_ratio, gain=g, norm=cfg.norm, block=kind
    )


def _pre_recursion(cfg, layer, v_stem, g, two):
    def step(q, _):
        v_f, chi = layer(q)
        if two:
            v_f, chi2 = layer(v_f)
            chi = chi * chi2
        q_next = q + g**2 * v_f
        return q_next, (q_next, 1.0 + g**2 * chi)

    _, (qs, factors) = jax.lax.scan(step, v_stem, None, length=cfg.depth - 1)
    q_all = jnp.concatenate([v_stem[None], qs])
    return q_all, jnp.zeros_like(q_all), factors


def _post_recursion(cfg, phi, dphi, v_stem, g, two, sw2, sb2):
    normed = cfg.norm is not None
    nodes, weights = np.polynomial.hermite_e.hermegauss(_POST_NODES)
    nodes = jnp.asarray(nodes, v_stem.dtype)
    weights = jnp.asarray(weights / weights.sum(), v_stem.dtype)

    def merge(values, masses):
        # Equal-mass bins of the sorted atoms, each replaced by its mean: keeps the mean
        # exactly and the law to within one bin; the atoms come out sorted.
        order = jnp.argsort(values)
        values, masses = values[order], masses[order]
        mid = jnp.cumsum(masses) - masses / 2
        bins = jnp.clip(jnp.floor(mid * _POST_ATOMS).astype(jnp.int32), 0, _POST_ATOMS - 1)
        mass = jax.ops.segment_sum(masses, bins, _POST_ATOMS)
        total = jax.ops.segment_sum(masses * values, bins, _POST_ATOMS)
        return jnp.where(mass > 0, total / jnp.where(mass > 0, mass, 1.0), 0.0), mass

    def branch_var(q):
        # Var F and chi_F of Norm(W a + b) (one layer) or Norm2(W2 phi(Norm(W a + b)) + b2).
        v1 = sw2 * q + sb2
        v_f, chi = (jnp.ones_like(v1), sw2 / v1) if normed else (v1, sw2 * jnp.ones_like(v1))
        if two:
            s = jnp.ones_like(v1) if normed else jnp.sqrt(v1)
            e2 = jnp.sum(weights * phi(s * nodes) ** 2)
            d2 = jnp.sum(weights * dphi(s * nodes) ** 2)
            v2 = sw2 * e2 + sb2
            chi = chi * sw2 * d2 * (1.0 / v2 if normed else 1.0)
            v_f = jnp.ones_like(v2) if normed else v2
        return v_f, chi

    def spread(atoms, mass, v_f):
        # y = a + g sqrt(v_f) t for every atom a and Gauss-Hermite node t: (K, nodes).
        y = atoms[:, None] + g * jnp.sqrt(v_f) * nodes[None, :]
        return y, mass[:, None] * weights[None, :]

    def forward(carry, _):
        atoms, mass = carry
        v_f, chi = branch_var(jnp.sum(mass * atoms**2))
        y, w = spread(atoms, mass, v_f)
        new = merge(phi(y).reshape(-1), w.reshape(-1))
        return new, (new, v_f, chi)

    # Block 1: phi(Norm(W x + b)) of a Gaussian pre-activation.
    s0 = 1.0 if normed else jnp.sqrt(v_stem)
    first = merge(phi(s0 * nodes), weights)
    _, (laws, v_fs, chis) = jax.lax.scan(forward, first, None, length=cfg.depth - 1)
    atoms = jnp.concatenate([first[0][None], laws[0]])
    masses = jnp.concatenate([first[1][None], laws[1]])

    # Backward: h_l(x) = E[(dL/da_l)_i^2 | a_{l,i} = x] / E||dL/da_L||^2 * N on each block's
    # atoms. The identity path keeps a unit's own gradient through phi'(y) of that unit, so
    # consecutive masks of one unit are correlated (a unit that is on tends to stay on); the
    # branch path spreads E[(eps J_F)_i^2] = chi_F E[eps^2] evenly over the units.
    def backward(h_above, inputs):
        atoms_below, mass_below, atoms_above, v_f, chi = inputs
        y, w = spread(atoms_below, mass_below, v_f)
        eps2 = dphi(y) ** 2 * jnp.interp(phi(y), atoms_above, h_above)
        own = jnp.sum(weights[None, :] * eps2, axis=1)
        h = own + g**2 * chi * jnp.sum(w * eps2)
        return h, jnp.sum(mass_below * h)

    top = jnp.ones_like(atoms[-1])
    rev = (atoms[:-1][::-1], masses[:-1][::-1], atoms[1:][::-1], v_fs[::-1], chis[::-1])
    _, ratios = jax.lax.scan(backward, top, rev)
    grad_ratio = jnp.concatenate([ratios[::-1], jnp.ones((1,), top.dtype)])
    q_all = jnp.sum(masses * atoms**2, axis=1)
    m_all = jnp.sum(masses * atoms, axis=1)
    return q_all, m_all, grad_ratio


def _act_branch_recursion(cfg, phi, dphi, gauss, v_stem, g):
    sw2, sb2 = float(cfg.sigma_w) ** 2, float(cfg.sigma_b) ** 2
    normed = cfg.norm is not None

    def branch(q):
        # Standard deviation of the branch's activation input u_l.
        s = jnp.ones_like(q) if normed else jnp.sqrt(sw2 * q + sb2)
        return s, gauss(phi, s), gauss(lambda t: phi(t) ** 2, s)

    s1 = jnp.ones_like(v_stem) if normed else jnp.sqrt(v_stem)
    q1, m1 = gauss(lambda t: phi(t) ** 2, s1), gauss(phi, s1)  # block 1 is never residual

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
    return jnp.concatenate([q1[None], qs]), jnp.concatenate([m1[None], ms]), factors


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
    """The gradient at every block against the article's identity-path decomposition.

    The decomposition is ``dL/da_l = dL/da_L + sum_{k>l} g dL/da_k dF_k/da_{k-1}`` (identity
    path plus branch paths, the gradient of ``x_L = x_l + sum F``). It is exact for ``pre``
    and ``act_branch`` blocks (nothing follows the addition) and misses the activation's
    mask in ``post`` blocks; ``formula_error`` measures the miss.

    Attributes:
      total: ``||dL/da_l||`` over the whole batch, ``(depth,)``.
      identity: ``||dL/da_L||`` where every block above ``l`` has a skip (all residual blocks),
        0 without a skip connection, ``(depth,)``.
      branch: ``||dL/da_l - identity term||``, ``(depth,)``.
      cosine: cosine between ``dL/da_l`` and ``dL/da_L``, ``(depth,)``.
      formula_error: ``||identity + branch paths - dL/da_l|| / ||dL/da_l||`` with the branch
        paths from per-block VJPs of the branches alone, ``(depth,)``; round-off where the
        decomposition is exact (0 at the top block; 0 without a skip connection).
      residual: the config's residual kind.
      block: the config's residual block.
    """

    total: jax.Array
    identity: jax.Array
    branch: jax.Array
    cosine: jax.Array
    formula_error: jax.Array
    residual: str | None = static_field()
    block: str = static_field(default="pre")


def _branch_terms(net: Net, params: Params, acts: jax.Array, grads: jax.Array) -> jax.Array:
    """``sum_{k>l} g dL/da_k dF_k/da_{k-1}`` for every block ``l``, ``(depth, ..., width)``."""

    def one(layer, a_prev, delta):
        # The VJP of the branch alone: what the article's x_L = x_l + sum F differentiates.
        return jax.vjp(lambda a: net.branch(layer, a)[2], a_prev)[1](delta)[0]

    terms = jax.vmap(one)(layout.hidden_layers(params), acts[:-1], grads[1:])
    # Term of block k+1 sits at a_k; sum over every block strictly above l: a reversed
    # cumulative sum, 0 at the top.
    above = jnp.cumsum(terms[::-1], axis=0)[::-1]
    return jnp.concatenate([above, jnp.zeros_like(grads[:1])], axis=0)


def identity_path(
    net: Net, params: Params, x: jax.Array, y: jax.Array, *, loss: str | LossFn = "mse"
) -> IdentityPath:
    """Splits ``dL/da_l`` into the identity-path term ``dL/da_L`` and the branch paths.

    ``dL/da_l`` comes from one ``jax.grad`` pass; the branch paths from one VJP per branch
    (BatchNorm's batch coupling is inside the branch term).

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
    norm = lambda v: jnp.sqrt(jnp.sum(v**2, axis=-1))
    total = norm(flat)
    if net.cfg.residual is None:
        ident = jnp.zeros_like(flat).at[-1].set(top)
        error = jnp.zeros_like(total)
    else:
        ident = jnp.broadcast_to(top, flat.shape)
        acts = net.forward(params, x).act
        formula = ident + _branch_terms(net, params, acts, grads).reshape(flat.shape)
        error = norm(formula - flat) / jnp.where(total > 0, total, 1.0)
    denom = total * norm(top)
    cosine = jnp.sum(flat * top, axis=-1) / jnp.where(denom > 0, denom, 1.0)
    return IdentityPath(
        total=total,
        identity=norm(ident),
        branch=norm(flat - ident),
        cosine=cosine,
        formula_error=error,
        residual=net.cfg.residual,
        block=net.cfg.residual_block,
    )


def branch_path_sum(
    net: Net, params: Params, x: jax.Array, y: jax.Array, *, loss: str | LossFn = "mse"
) -> jax.Array:
    """The branch-path term ``sum_{k>l} g dL/da_k dF_k/da_{k-1}``, one VJP per block.

    An independent computation of ``dL/da_l - dL/da_L`` for ``pre`` and ``act_branch`` blocks
    (from per-block VJPs of the branches alone, not from the network's backward pass), used
    to check the decomposition of :func:`identity_path`; for ``post`` blocks it is the
    article's formula, which misses the activation after each addition.

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
    return _branch_terms(net, params, net.forward(params, x).act, grads)


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
        params = layout.with_residual_gain(params, gain)
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
