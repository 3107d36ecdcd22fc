"""Exact layer Jacobians J_l = da_l/da_{l-1}, the input-output Jacobian and the chain rule.

Per-example Jacobians need a network whose examples do not interact. BatchNorm couples the
examples of a batch (its mean and variance are the batch's), so for it the meaningful object
is the Jacobian of the whole batch map ``(B, N) -> (B, N)``; :func:`batch_layer_jacobians`
computes that one, flattened to ``(B*N, B*N)`` matrices, and every result says which kind it is.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from gradjax.meanfield.activations import derivative
from gradjax.measure.gradients import LossFn, get_loss
from gradjax.nets import layout
from gradjax.nets.models import Net, Params
from gradjax.utils.errors import GradjaxInputError, invalid
from gradjax.utils.pytree import pytree_dataclass, static_field


def jacobian(f: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
    """The Jacobian of ``f`` at ``x``, forward or reverse mode by shape.

    Reverse mode costs one VJP per output and forward mode one JVP per input, so the
    cheaper one is picked from the sizes (forward on ties: it keeps no residuals).

    Args:
      f: a function of one array.
      x: the point.

    Returns:
      ``df/dx`` with shape ``f(x).shape + x.shape``.
    """
    out = jax.eval_shape(f, x)
    use_rev = out.size < jnp.size(x)
    return (jax.jacrev if use_rev else jax.jacfwd)(f)(x)


@pytree_dataclass
class LayerJacobians:
    """The Jacobian of every block with respect to its input.

    Attributes:
      first: ``J_1 = da_1/dx``, ``(width, input_dim)`` (per example) or
        ``(B*width, B*input_dim)`` (batch).
      hidden: ``J_l`` for blocks 2..depth, ``(depth-1, width, width)`` (per example) or
        ``(depth-1, B*width, B*width)`` (batch).
      batch_coupled: ``True`` when these are Jacobians of the whole batch map.
    """

    first: jax.Array
    hidden: jax.Array
    batch_coupled: bool = static_field(default=False)

    def all_layers(self) -> jax.Array:
        """All J_l stacked, ``(depth, n, n)``; needs ``input_dim == width``."""
        if self.first.shape != self.hidden.shape[1:]:
            raise invalid(
                "first.shape", self.first.shape, f"{self.hidden.shape[1:]} (input_dim == width)"
            )
        return jnp.concatenate([self.first[None], self.hidden], axis=0)


def _block_output(net: Net, layer, a, residual: bool) -> jax.Array:
    return net.block(layer, a, residual=residual)[2]


@functools.partial(jax.jit, static_argnames=("net",))
def layer_jacobians(net: Net, params: Params, x: jax.Array) -> LayerJacobians:
    """Per-example layer Jacobians at one input.

    Args:
      net: a network without BatchNorm (use :func:`batch_layer_jacobians` with it).
      params: its parameters.
      x: one input, ``(input_dim,)``.

    Returns:
      A :class:`LayerJacobians` with ``batch_coupled=False``.
    """
    if net.cfg.norm == "batch":
        raise GradjaxInputError(
            "norm='batch' is invalid for per-example Jacobians: BatchNorm couples the batch; "
            "use batch_layer_jacobians(net, params, x) with x of shape (batch, input_dim)"
        )
    if jnp.ndim(x) != 1:
        raise invalid("x.shape", jnp.shape(x), f"({net.cfg.input_dim},), one example")
    trace = net.forward(params, x)
    first = jacobian(
        lambda a: _block_output(net, layout.input_layer(params), a, False), jnp.asarray(x)
    )

    def one(layer, a_prev):
        return jacobian(lambda a: _block_output(net, layer, a, True), a_prev)

    hidden = jax.vmap(one)(layout.hidden_layers(params), trace.act[:-1])
    return LayerJacobians(first=first, hidden=hidden, batch_coupled=False)


@functools.partial(jax.jit, static_argnames=("net",))
def batch_layer_jacobians(net: Net, params: Params, x: jax.Array) -> LayerJacobians:
    """Layer Jacobians of the whole batch map ``A_{l-1} -> A_l``, as matrices.

    For a network without BatchNorm these are block diagonal (one per-example block per
    example); with BatchNorm the off-diagonal blocks are the coupling through batch statistics.

    Args:
      net: the network.
      params: its parameters.
      x: a batch, ``(batch, input_dim)``.

    Returns:
      A :class:`LayerJacobians` with ``batch_coupled=True`` and matrices of size
      ``(batch*width, batch*input_dim)`` and ``(depth-1, batch*width, batch*width)``.
    """
    net.check_input(x)
    if jnp.ndim(x) != 2:
        raise invalid("x.shape", jnp.shape(x), f"(batch, {net.cfg.input_dim})")
    x = jnp.asarray(x, net.dtype)
    batch = x.shape[0]
    trace = net.forward(params, x)

    def flat_jac(layer, a_prev, residual):
        j = jacobian(lambda a: _block_output(net, layer, a, residual), a_prev)
        return j.reshape(batch * j.shape[1], batch * j.shape[3])

    first = flat_jac(layout.input_layer(params), x, False)
    hidden = jax.vmap(lambda layer, a: flat_jac(layer, a, True))(
        layout.hidden_layers(params), trace.act[:-1]
    )
    return LayerJacobians(first=first, hidden=hidden, batch_coupled=True)


def chain_product(jacobians: LayerJacobians) -> jax.Array:
    """The chain-rule product ``J_depth ... J_2 J_1`` (= da_depth/dx).

    Args:
      jacobians: the layer Jacobians.

    Returns:
      The product, ``(width, input_dim)`` (or the batch-matrix form).
    """
    prod, _ = jax.lax.scan(lambda acc, j: (j @ acc, None), jacobians.first, jacobians.hidden)
    return prod


@functools.partial(jax.jit, static_argnames=("net", "to"))
def io_jacobian(net: Net, params: Params, x: jax.Array, *, to: str = "last_hidden") -> jax.Array:
    """The end-to-end Jacobian of one input, computed directly (not via the chain rule).

    Args:
      net: a network without BatchNorm.
      params: its parameters.
      x: one input, ``(input_dim,)``.
      to: ``"last_hidden"`` for ``da_depth/dx`` or ``"output"`` for ``df/dx``.

    Returns:
      ``(width, input_dim)`` or ``(out_dim, input_dim)``.
    """
    if to not in ("last_hidden", "output"):
        raise invalid("to", to, "'last_hidden' or 'output'")
    if jnp.ndim(x) != 1:
        raise invalid("x.shape", jnp.shape(x), f"({net.cfg.input_dim},), one example")
    pick = (lambda t: t.act[-1]) if to == "last_hidden" else (lambda t: t.output)
    return jacobian(lambda v: pick(net.forward(params, v)), jnp.asarray(x, net.dtype))


@functools.partial(jax.jit, static_argnames=("net",))
def expected_factors(net: Net, params: Params, x: jax.Array) -> LayerJacobians:
    """The closed form of each chain-rule factor; the article's ``J_l = diag(phi'(z_l)) W_l``.

    Residual blocks of gain g (``J_F`` the branch's Jacobian, ``D(v) = diag(phi'(v))``):

    * ``act_branch``: ``I + g D(z_l) W_l``;
    * ``pre``: ``I + g J_F`` with ``J_F = W_l D(a_{l-1})``, or ``W2_l D(z_l) W_l D(a_{l-1})``
      with two layers; the linear stem's factor is ``W_1``;
    * ``post``: ``D(y_l) (I + g J_F)`` with ``y_l = a_{l-1} + g F(a_{l-1})``, ``J_F = W_l`` or
      ``W2_l D(z_l) W_l``.

    Args:
      net: a network without normalisation.
      params: its parameters.
      x: one input, ``(input_dim,)``.

    Returns:
      A :class:`LayerJacobians` built from the formula, for comparison with
      :func:`layer_jacobians`.
    """
    cfg = net.cfg
    if cfg.norm is not None:
        raise invalid("norm", cfg.norm, "None: the closed-form factors hold without a norm")
    trace = net.forward(params, x)
    dphi = derivative(net.activation)
    first_layer, hidden_layers = layout.input_layer(params), layout.hidden_layers(params)
    if net.linear_stem:
        first = _weight(first_layer)
    else:
        first = dphi(trace.preact[0])[:, None] * _weight(first_layer)
    eye = jnp.eye(cfg.width, dtype=first.dtype)
    if cfg.residual is None or cfg.residual_block == "act_branch":
        hidden = dphi(trace.preact[1:])[:, :, None] * _weight(hidden_layers)
        if cfg.residual is not None:
            gain = jnp.broadcast_to(
                jnp.asarray(net.branch_gain(hidden_layers), hidden.dtype), hidden.shape[:1]
            )
            hidden = eye + gain[:, None, None] * hidden
        return LayerJacobians(first=first, hidden=hidden, batch_coupled=False)

    def one(layer, a_prev, z):
        # z is the branch's first weight layer output (no norm here, so u = z).
        jf = _weight(layer)
        if cfg.residual_block == "pre":
            jf = jf * dphi(a_prev)[None, :]
        if net.two_layer_branch:
            jf = (_weight(layer, "W2") * dphi(z)[None, :]) @ jf
        factor = eye + net.branch_gain(layer) * jf
        if cfg.residual_block == "post":
            factor = dphi(a_prev + net.branch(layer, a_prev)[2])[:, None] * factor
        return factor

    hidden = jax.vmap(one)(hidden_layers, trace.act[:-1], trace.preact[1:])
    return LayerJacobians(first=first, hidden=hidden, batch_coupled=False)


def _check_closed_form(net: Net) -> None:
    """The article's factor ``diag(phi'(z)) W`` is the Jacobian of ``phi(W a + b)`` blocks only."""
    if net.cfg.norm is not None:
        raise invalid("norm", net.cfg.norm, "None: the closed form diag(phi'(z)) W has no norm")
    if net.cfg.residual is not None and net.cfg.residual_block != "act_branch":
        raise invalid(
            "residual_block",
            net.cfg.residual_block,
            "'act_branch' (x + g phi(W x + b)) or no residual: the closed form diag(phi'(z)) W "
            "is the factor of a phi(W a + b) branch",
        )


def _weight(group: dict[str, jax.Array], leaf: str = "W") -> jax.Array:
    """A block group's effective weights, lazy scales folded in (one fused product)."""
    if "w_scale" not in group:
        return group[leaf]
    return group[leaf] * group["w_scale"][..., None, None]


@functools.partial(jax.jit, static_argnames=("net", "loss"))
def chain_rule_activation_gradients(
    net: Net, params: Params, x: jax.Array, y: jax.Array, *, loss: str | LossFn = "mse"
) -> jax.Array:
    """dL/da_l for every block by explicit multiplication with the exact layer Jacobians.

    ``dL/da_L`` comes from the readout; then ``dL/da_{l-1} = dL/da_l J_l`` down to block 1:
    the article's chain rule carried out literally (compare with ``jax.grad`` through
    :func:`gradjax.layer_gradients`).

    Args:
      net: a network without BatchNorm.
      params: its parameters.
      x: one input, ``(input_dim,)``.
      y: its target.
      loss: a loss name or callable of ``(output, target)``.

    Returns:
      ``(depth, width)``: dL/da_1 ... dL/da_depth.
    """
    Net.require_materialized(params, "chain_rule_activation_gradients")
    loss_fn = get_loss(loss)
    trace = net.forward(params, x)
    jac = layer_jacobians(net, params, x)
    g_out = jax.grad(lambda o: loss_fn(o[None], y[None]))(trace.output)
    delta_last = layout.readout_weight(params).T @ g_out
    # Each step emits dL/da_l and carries dL/da_{l-1} = dL/da_l J_l; the last carry is dL/da_1.
    delta_first, deltas = jax.lax.scan(lambda d, j: (d @ j, d), delta_last, jac.hidden[::-1])
    return jnp.concatenate([delta_first[None], deltas[::-1]], axis=0)


@pytree_dataclass
class ChainRuleCheck:
    """How far the chain rule's pieces are from their direct counterparts (relative errors).

    Attributes:
      product_error: ``||J_L...J_1 - da_L/dx|| / ||da_L/dx||`` (claim C1).
      factor_error: ``max_l ||J_l - diag(phi'(z_l)) W_l|| / ||J_l||`` (claim C2).
      gradient_error: ``max_l ||dL/dW_l (chain rule) - dL/dW_l (jax.grad)|| / ||jax.grad||``.
    """

    product_error: jax.Array
    factor_error: jax.Array
    gradient_error: jax.Array


@functools.partial(jax.jit, static_argnames=("net", "loss"))
def chain_rule_weight_gradients(
    net: Net, params: Params, x: jax.Array, y: jax.Array, *, loss: str | LossFn = "mse"
) -> jax.Array:
    """dL/dW_l for every block, assembled by hand from the article's chain-rule formula.

    ``dL/da_l = dL/da_L J_L ... J_{l+1}`` accumulated backwards from the readout, then
    ``dL/dW_l = (dL/da_l * phi'(z_l)) a_{l-1}^T`` (residual blocks scale the branch by g).

    Args:
      net: a network without normalisation whose blocks are ``phi(W a + b)`` (plain or
        ``act_branch`` residual).
      params: its parameters.
      x: one input, ``(input_dim,)``.
      y: its target.
      loss: a loss name or callable of ``(output, target)``.

    Returns:
      ``(depth-1, width, width)`` gradients of the hidden blocks' weights, in layer order.
    """
    Net.require_materialized(params, "chain_rule_weight_gradients")
    loss_fn = get_loss(loss)
    trace = net.forward(params, x)
    factors = expected_factors(net, params, x)
    dphi = derivative(net.activation)(trace.preact)
    _check_closed_form(net)
    w_out = layout.readout_weight(params)
    g_out = jax.grad(lambda o: loss_fn(o[None], y[None]))(trace.output)
    delta_last = w_out.T @ g_out

    def back(delta, j):
        return delta @ j, delta

    # Scan the factors from the top; each step emits dL/da_l before multiplying by J_l.
    _, deltas = jax.lax.scan(back, delta_last, factors.hidden[::-1])
    deltas = deltas[::-1]  # dL/da_l for blocks 2..depth
    gain = 1.0
    if net.cfg.residual is not None:
        gain = net.branch_gain(layout.hidden_layers(params))
        gain = jnp.broadcast_to(jnp.asarray(gain, deltas.dtype), deltas.shape[:1])[:, None]
    local = deltas * dphi[1:] * gain
    return local[:, :, None] * trace.act[:-1][:, None, :]


@functools.partial(jax.jit, static_argnames=("net", "loss"))
def chain_rule_check(
    net: Net, params: Params, x: jax.Array, y: jax.Array, *, loss: str | LossFn = "mse"
) -> ChainRuleCheck:
    """Checks claims C1 and C2 exactly at one input.

    Args:
      net: a network without normalisation whose blocks are ``phi(W a + b)``, plain or as
        ``act_branch`` residual branches (the article's factor ``diag(phi'(z)) W``).
      params: its parameters.
      x: one input, ``(input_dim,)``.
      y: its target, ``(out_dim,)`` for ``mse``.
      loss: a loss name or callable.

    Returns:
      A :class:`ChainRuleCheck` of relative errors (float round-off when the claims hold).
    """
    Net.require_materialized(params, "chain_rule_check")
    _check_closed_form(net)
    rel = lambda a, b: jnp.linalg.norm(a - b) / jnp.maximum(jnp.linalg.norm(b), 1e-30)
    jac = layer_jacobians(net, params, x)
    formula = expected_factors(net, params, x)
    direct = io_jacobian(net, params, x)
    factor_errors = jax.vmap(rel)(formula.hidden, jac.hidden)
    factor_error = jnp.maximum(rel(formula.first, jac.first), jnp.max(factor_errors, initial=0.0))
    by_hand = chain_rule_weight_gradients(net, params, x, y, loss=loss)
    loss_fn = get_loss(loss)
    auto = layout.hidden_weights(
        jax.grad(lambda p: loss_fn(net.apply(p, x)[None], y[None]))(params)
    )
    grad_error = jnp.max(jax.vmap(rel)(by_hand, auto), initial=0.0)
    return ChainRuleCheck(
        product_error=rel(chain_product(jac), direct),
        factor_error=factor_error,
        gradient_error=grad_error,
    )
