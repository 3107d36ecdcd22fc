"""gradjax's networks: pure ``init``/``apply`` over plain parameter pytrees.

The parameter layout (three groups, the hidden blocks stacked on a leading axis) belongs to
:mod:`gradjax.nets.layout`; this module builds and runs networks through its accessors. Stacking
the hidden blocks lets ``lax.scan`` run a depth-1000 network with one compiled block, and
lets per-layer diagnostics ``vmap`` over the layer axis.

Why plain pytrees at the core: every diagnostic differentiates one block at a time with
respect to its input, scales weights under ``vmap`` for common random numbers, and scans over
depth; pure functions over arrays make all three direct. Flax code gets the same networks as
Flax NNX modules (:func:`flax_module`, :meth:`Net.to_nnx`), which run this pure path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from gradjax.meanfield.activations import get_activation
from gradjax.nets import layout
from gradjax.nets.config import NetConfig
from gradjax.nets.initializers import base_weight, scheme_factor
from gradjax.utils.errors import GradjaxInputError, check_key, invalid
from gradjax.utils.pytree import pytree_dataclass

Params = layout.Params


@pytree_dataclass
class ForwardTrace:
    """Everything a forward pass computes, per block.

    Attributes:
      output: readout output, ``(..., out_dim)``.
      preact: the output ``z_l`` of each block's first weight layer, ``(depth, ..., width)``:
        ``W_l a_{l-1} + b_l``, or ``W_l phi(Norm(a_{l-1})) + b_l`` in a pre-activation block.
      normed: ``u_l``, ``z_l`` after the norm that follows it (``z_l`` where none does).
      act: block outputs ``a_l``, ``(depth, ..., width)``.
    """

    output: jax.Array
    preact: jax.Array
    normed: jax.Array
    act: jax.Array


class Net:
    """A :class:`~gradjax.nets.config.NetConfig` made into pure functions.

    Example:
      >>> import jax, gradjax as gj
      >>> net = gj.build(gj.NetConfig(depth=8, width=32, activation="tanh", sigma_w=1.5))
      >>> params = net.init(jax.random.key(0))
      >>> net.apply(params, jnp.ones((4, 32))).shape
      (4, 1)
    """

    def __init__(self, cfg: NetConfig):
        if not isinstance(cfg, NetConfig):
            raise invalid("cfg", cfg, "a gradjax.NetConfig")
        self.cfg = cfg
        self.activation = get_activation(cfg.activation)
        self.dtype = jnp.dtype(cfg.dtype)

    # Nets are equal when their configs are, so jit caches and sweeps can key on them.
    def __eq__(self, other: object) -> bool:
        return isinstance(other, Net) and other.cfg == self.cfg

    def __hash__(self) -> int:
        return hash(self.cfg)

    def __repr__(self) -> str:
        return f"Net({self.cfg!r})"

    def _check_dtype(self) -> None:
        if self.cfg.dtype == "float64" and not jax.config.jax_enable_x64:
            raise GradjaxInputError(
                "dtype='float64' is invalid here: enable 64-bit JAX first with "
                "jax.config.update('jax_enable_x64', True)"
            )

    # ------------------------------------------------------------------ parameters

    @property
    def linear_stem(self) -> bool:
        """Whether block 0 is linear (``W x + b``): the stem of pre-activation residual stacks.

        A pre-activation stack adds zero-mean branch outputs to its stream, so a linear stem
        keeps every block input symmetric about 0 (the stream of He et al. 2016b, whose
        first convolution feeds the first block directly).
        """
        return self.cfg.residual is not None and self.cfg.residual_block == "pre"

    @property
    def two_layer_branch(self) -> bool:
        """Whether each residual branch has two weight layers (``W2``, ``b2`` leaves)."""
        return self.cfg.residual is not None and self.cfg.branch_layers == 2

    def init_base(self, key: jax.Array) -> Params:
        """Draws unit-scale parameters: the random part of :meth:`init`.

        Weights follow the scheme's base draw (N(0, 1/fan_in), N(0, 1) or Haar orthogonal),
        biases are N(0, 1); :meth:`scale` turns them into a network at any (sigma_w, sigma_b).

        Args:
          key: PRNG key.

        Returns:
          The unscaled parameter pytree.
        """
        self._check_dtype()
        cfg, n, d = self.cfg, self.cfg.width, self.cfg.input_dim
        k_in, k_hid, k_out, kb_in, kb_hid, kb_out = jax.random.split(key, 6)
        # Each group's draw waits for the previous one: orthogonal draws are QRs, and
        # independent LAPACK calls in one program can deadlock (see gradjax.utils.lapack).
        draw = lambda k, rows, cols, prev=(): base_weight(
            k, cfg.init, rows, cols, self.dtype, order_after=prev
        )
        hidden_keys = jax.random.split(k_hid, cfg.depth - 1)
        w_in = draw(k_in, n, d)
        w_hidden = jax.vmap(lambda k: draw(k, n, n, w_in))(hidden_keys)
        w_out = draw(k_out, cfg.out_dim, n, w_hidden)
        hidden = {
            "W": w_hidden.reshape(cfg.depth - 1, n, n),
            "b": jax.random.normal(kb_hid, (cfg.depth - 1, n), self.dtype),
        }
        if self.two_layer_branch:
            # Keys folded from the root leave the one-layer draws unchanged.
            k_w2, k_b2 = jax.random.split(jax.random.fold_in(key, 2), 2)
            w2 = jax.vmap(lambda k: draw(k, n, n, w_out))(jax.random.split(k_w2, cfg.depth - 1))
            hidden["W2"] = w2.reshape(cfg.depth - 1, n, n)
            hidden["b2"] = jax.random.normal(k_b2, (cfg.depth - 1, n), self.dtype)
        first = {"W": w_in, "b": jax.random.normal(kb_in, (n,), self.dtype)}
        if cfg.norm is not None and cfg.norm_affine:
            ones = lambda *lead: jnp.ones((*lead, n), self.dtype)
            zeros = lambda *lead: jnp.zeros((*lead, n), self.dtype)
            if not self.linear_stem:
                first.update(gamma=ones(), beta=zeros())
            hidden.update(gamma=ones(cfg.depth - 1), beta=zeros(cfg.depth - 1))
            if self.two_layer_branch:
                hidden.update(gamma2=ones(cfg.depth - 1), beta2=zeros(cfg.depth - 1))
        if cfg.residual == "skipinit":
            hidden[layout.GAIN] = jnp.zeros((cfg.depth - 1,), self.dtype)
        readout = {"W": w_out, "b": jax.random.normal(kb_out, (cfg.out_dim,), self.dtype)}
        return layout.make_params(input=first, hidden=hidden, readout=readout)

    def scale(
        self,
        base: Params,
        *,
        sigma_w: float | jax.Array | None = None,
        sigma_b: float | jax.Array | None = None,
        lazy: bool = False,
    ) -> Params:
        """Applies weight and bias scales to unit-scale parameters.

        Args:
          base: output of :meth:`init_base`.
          sigma_w: weight scale (may be traced, e.g. a vmapped sweep axis); default the
            config's.
          sigma_b: bias standard deviation (may be traced); default the config's.
          lazy: keep the weights and biases unscaled and add the scales as leaves
            ``w_scale`` and ``b_scale`` (per block; stacked for the hidden group), which
            :meth:`block` applies to each weight layer's output instead of its weights. Under
            ``vmap`` over the scales the weights then stay shared: a grid of scales costs one
            matrix-matrix product per layer instead of one rescaled weight copy per grid
            point. Lazy parameters are for forward passes and derivatives with respect to
            activations; :meth:`materialize` turns them into ordinary ones.

        Returns:
          Parameters with ``W <- sigma_w * scheme_factor * W`` and ``b <- sigma_b * b`` (the
          same for a two-layer branch's ``W2``, ``b2``), or the lazy form.
        """
        cfg = self.cfg
        sw = cfg.sigma_w if sigma_w is None else sigma_w
        sb = cfg.sigma_b if sigma_b is None else sigma_b
        fans = layout.group_fans(input_dim=cfg.input_dim, width=cfg.width, out_dim=cfg.out_dim)

        def one(group: str, leaves: layout.Layer) -> layout.Layer:
            fan_in, fan_out = fans[group]
            factor = scheme_factor(
                cfg.init, fan_in, fan_out, activation=cfg.activation, sigma_b=cfg.sigma_b
            )
            out = dict(leaves)
            w_scale = jnp.asarray(sw * factor, self.dtype)
            b_scale = jnp.asarray(sb, self.dtype)
            if lazy:
                # One scale per block, so lax.scan and layer_params slice them like W.
                lead = leaves["W"].shape[:-2]
                out["w_scale"] = jnp.broadcast_to(w_scale, lead)
                out["b_scale"] = jnp.broadcast_to(b_scale, lead)
                return out
            for w, b in _WEIGHT_LAYERS:
                if w in leaves:
                    out[w] = leaves[w] * w_scale
                    out[b] = leaves[b] * b_scale
            return out

        return layout.map_groups(one, base)

    @staticmethod
    def is_lazy(params: Params) -> bool:
        """Whether ``params`` are in the lazy form of :meth:`scale` (``lazy=True``)."""
        return any("w_scale" in leaves for leaves in params.values())

    @staticmethod
    def materialize(params: Params) -> Params:
        """Folds lazy scales into the weights and biases; ordinary parameters come back as is.

        Args:
          params: parameters, lazy or not.

        Returns:
          Ordinary parameters (no ``w_scale``/``b_scale`` leaves).
        """

        def one(group: str, leaves: layout.Layer) -> layout.Layer:
            leaves = dict(leaves)
            if "w_scale" in leaves:
                w_scale, b_scale = leaves.pop("w_scale"), leaves.pop("b_scale")
                for w, b in _WEIGHT_LAYERS:
                    if w in leaves:
                        leaves[w] = leaves[w] * w_scale[..., None, None]
                        leaves[b] = leaves[b] * b_scale[..., None]
            return leaves

        return layout.map_groups(one, params)

    @staticmethod
    def require_materialized(params: Params, where: str) -> None:
        """Raises a clear error when a function that reads ``W`` itself gets lazy params."""
        if Net.is_lazy(params):
            raise GradjaxInputError(
                f"params is invalid for {where}: it holds lazy scales (w_scale/b_scale, from "
                "Net.scale(..., lazy=True)); pass Net.materialize(params) instead"
            )

    def init(self, key: jax.Array) -> Params:
        """Draws parameters at the config's (sigma_w, sigma_b).

        Args:
          key: PRNG key.

        Returns:
          The parameter pytree.

        Raises:
          GradjaxInputError: if ``key`` is not a PRNG key (an integer is not one).
        """
        check_key("key", key, allow_seed=False)
        return self.scale(self.init_base(key))

    # ------------------------------------------------------------------ blocks

    def branch_gain(self, layer: dict[str, jax.Array]) -> jax.Array | float:
        """The gain ``g`` of a residual block's branch (SkipInit's learnable one, or alpha)."""
        if self.cfg.residual == "skipinit":
            return layer[layout.GAIN]
        return self.cfg.alpha

    def branch(
        self, layer: dict[str, jax.Array], a: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The residual branch of a hidden block: ``(z, u, g F(a))``.

        ``g F(a)`` is what the block adds to its skip: ``a_l = a_{l-1} + g F`` (``pre``,
        ``act_branch``) or ``a_l = phi(a_{l-1} + g F)`` (``post``). The branch ``F`` is

        * ``pre``: ``W phi(Norm(a)) + b``; two layers ``W2 phi(Norm2(W phi(Norm(a)) + b)) + b2``
          (full pre-activation, He et al. 2016b; it ends in a linear map);
        * ``post``: ``Norm(W a + b)``; two layers ``Norm2(W2 phi(Norm(W a + b)) + b2)`` (the
          original ResNet's conv-BN-ReLU-conv-BN);
        * ``act_branch``: ``phi(Norm(W a + b))`` (ends in the activation).

        Args:
          layer: one hidden block's parameters.
          a: the block input, ``(width,)`` or ``(batch, width)``.

        Returns:
          The branch's first weight-layer output ``z``, ``z`` after the norm that follows it
          (``u``), and ``g F(a)``.
        """
        cfg = self.cfg
        kind, two, phi = cfg.residual_block, self.two_layer_branch, self.activation
        if kind == "pre":
            z = _affine(layer, phi(self._normalise(a, layer)))
            u = self._normalise(z, layer, "2") if two else z
            f = _affine(layer, phi(u), "W2", "b2") if two else z
        else:
            z = _affine(layer, a)
            u = self._normalise(z, layer)
            if kind == "act_branch":
                f = phi(u)
            elif two:
                f = self._normalise(_affine(layer, phi(u), "W2", "b2"), layer, "2")
            else:
                f = u
        return z, u, self.branch_gain(layer) * f

    def block(
        self,
        layer: dict[str, jax.Array],
        a: jax.Array,
        *,
        residual: bool,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """One block: ``a_{l-1} -> (z_l, u_l, a_l)``.

        Args:
          layer: one block's parameters (``W`` of shape (out, in), ``b``, optional norm,
            second-layer and gain leaves).
          a: the block input, ``(in,)`` or ``(batch, in)``. BatchNorm needs the batch form:
            its statistics are those of this batch (train mode), so examples are coupled.
          residual: whether this is a hidden block of the stack (the input block is never
            residual; in a pre-activation stack it is the linear stem).

        Returns:
          ``(z, u, a_next)``: first weight layer's output, that after its norm, block output.
        """
        cfg = self.cfg
        if not residual and self.linear_stem:
            z = _affine(layer, a)
            return z, z, z
        if not residual or cfg.residual is None:
            z = _affine(layer, a)
            u = self._normalise(z, layer)
            return z, u, self.activation(u)
        z, u, gf = self.branch(layer, a)
        y = a + gf
        return z, u, self.activation(y) if cfg.residual_block == "post" else y

    def _normalise(self, z: jax.Array, layer: dict[str, jax.Array], suffix: str = "") -> jax.Array:
        cfg = self.cfg
        if cfg.norm is None:
            return z
        if cfg.norm == "batch":
            mean = jnp.mean(z, axis=0)
            var = jnp.var(z, axis=0)
        else:
            mean = jnp.mean(z, axis=-1, keepdims=True)
            var = jnp.var(z, axis=-1, keepdims=True)
        u = (z - mean) * jax.lax.rsqrt(var + cfg.norm_eps)
        if cfg.norm_affine:
            u = u * layer["gamma" + suffix] + layer["beta" + suffix]
        return u

    def layer_params(self, params: Params, index: int) -> dict[str, jax.Array]:
        """The parameters of block ``index`` (0 = the input block, depth-1 = the last).

        Args:
          params: the network's parameters.
          index: a Python int in ``[0, depth)``.

        Returns:
          That block's parameter dict, as :meth:`block` takes it.
        """
        return layout.layer(params, index)

    # ------------------------------------------------------------------ forward

    def check_input(self, x: jax.Array) -> None:
        """Raises a clear error if ``x`` does not fit this network.

        Args:
          x: an input of shape ``(input_dim,)`` or ``(batch, input_dim)``.
        """
        cfg = self.cfg
        shape = getattr(x, "shape", None)
        if shape is None or len(shape) not in (1, 2) or shape[-1] != cfg.input_dim:
            raise invalid("x.shape", shape, f"(batch, {cfg.input_dim}) or ({cfg.input_dim},)")
        if len(shape) == 2 and shape[0] == 0:
            raise invalid("x.shape", shape, f"a batch of at least one example (n, {cfg.input_dim})")
        if cfg.norm == "batch" and (len(shape) != 2 or shape[0] < 2):
            raise GradjaxInputError(
                f"x.shape={shape} is invalid: norm='batch' needs a batch of at least 2 "
                "examples, shape (batch>=2, input_dim); with one example the batch "
                "variance is undefined"
            )

    def forward(
        self,
        params: Params,
        x: jax.Array,
        *,
        perturbations: jax.Array | None = None,
    ) -> ForwardTrace:
        """Runs the network and keeps every block's pre-activation and output.

        Args:
          params: parameters from :meth:`init` (or trained).
          x: ``(input_dim,)`` or ``(batch, input_dim)``.
          perturbations: optional ``(depth, *x.shape[:-1], width)`` added to each block output
            ``a_l``. Differentiating at zero perturbations gives dL/da_l for every layer in
            one backward pass.

        Returns:
          A :class:`ForwardTrace`.
        """
        self.check_input(x)
        cfg = self.cfg
        x = jnp.asarray(x, self.dtype)
        lead = x.shape[:-1]
        if perturbations is None:
            perturbations = jnp.zeros((cfg.depth, *lead, cfg.width), self.dtype)
        elif perturbations.shape != (cfg.depth, *lead, cfg.width):
            raise invalid(
                "perturbations.shape", perturbations.shape, str((cfg.depth, *lead, cfg.width))
            )
        z0, u0, a0 = self.block(layout.input_layer(params), x, residual=False)
        a0 = a0 + perturbations[0]

        def step(a, layer_and_eps):
            layer, eps = layer_and_eps
            z, u, a_next = self.block(layer, a, residual=True)
            a_next = a_next + eps
            return a_next, (z, u, a_next)

        hidden = (layout.hidden_layers(params), perturbations[1:])
        a_last, (zs, us, acts) = jax.lax.scan(step, a0, hidden)
        out = _affine(layout.readout_layer(params), a_last)
        stack = lambda first, rest: jnp.concatenate([first[None], rest], axis=0)
        return ForwardTrace(
            output=out, preact=stack(z0, zs), normed=stack(u0, us), act=stack(a0, acts)
        )

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        """The network's output for input ``x`` (``(input_dim,)`` or ``(batch, input_dim)``)."""
        return self.forward(params, x).output

    # ------------------------------------------------------------------ Flax boundary

    def to_nnx(self, params: Params) -> Any:
        """Wraps parameters in a Flax NNX module (see :func:`flax_module`).

        Args:
          params: the network's parameters (ordinary, not lazy).

        Returns:
          An ``nnx.Module`` whose ``nnx.Param`` leaves are ``params``, one submodule per block
          (``module.blocks[l].W``) and ``module.readout``; ``module(x)`` equals
          :meth:`apply`.
        """
        Net.require_materialized(params, "Net.to_nnx")
        return _nnx_module_class()(self, params)


# (weight, bias) leaf pairs of one block, in the order the block applies them.
_WEIGHT_LAYERS = (("W", "b"), ("W2", "b2"))


def _affine(layer: dict[str, jax.Array], a: jax.Array, w: str = "W", b: str = "b") -> jax.Array:
    """``W a + b``, with lazy scales applied to the product (see :meth:`Net.scale`)."""
    # a @ W^T as one contraction of a's last axis with W's input axis: no explicit transpose
    # of W, which XLA would otherwise materialise (a full weight copy) in the transposed
    # products of VJPs inside loops such as Lanczos.
    product = jax.lax.dot_general(a, layer[w], (((a.ndim - 1,), (1,)), ((), ())))
    if "w_scale" not in layer:
        return product + layer[b]
    # Scaling the product, not W, keeps W unbatched under a vmap over the scales, so the
    # product of a batch of activations with the shared W is one matrix-matrix product.
    return product * layer["w_scale"] + layer[b] * layer["b_scale"]


def build(cfg: NetConfig) -> Net:
    """Builds the pure network of a config.

    Args:
      cfg: a :class:`~gradjax.nets.config.NetConfig`.

    Returns:
      The :class:`Net`.
    """
    return Net(cfg)


def flax_module(cfg: NetConfig, key: jax.Array) -> Any:
    """gradjax's network of a config as a Flax NNX module, with freshly drawn parameters.

    The module is a list of block submodules (``module.blocks[l].W`` and the block's other
    leaves as ``nnx.Param``, block 0 the input block) and a readout (``module.readout``),
    called in order; each block runs :meth:`Net.block`, so the numbers are those of the pure
    path, and ``nnx.split``/``nnx.merge``, ``nnx.grad`` and ``nnx.Optimizer`` work on it. NNX, not
    Linen: it is what Flax recommends for new code, and one submodule per block lets a model
    boundary (:mod:`gradjax.boundary`) see every block's output without knowing gradjax. The
    pure :class:`Net` stays the fast path (one ``lax.scan`` over the stacked blocks); the
    module unrolls the blocks, so it is meant for Flax code and moderate depths.

    Args:
      cfg: a :class:`~gradjax.nets.config.NetConfig`.
      key: PRNG key (the same key gives the parameters of ``build(cfg).init(key)``).

    Returns:
      An ``nnx.Module``; ``module(x)`` is ``build(cfg).apply(params, x)``.

    Example:
      >>> import jax, gradjax as gj
      >>> from gradjax.nets.models import flax_module
      >>> model = flax_module(gj.NetConfig(depth=4, width=8), jax.random.key(0))
      >>> model(jax.numpy.ones((2, 8))).shape
      (2, 1)
    """
    net = build(cfg)
    return net.to_nnx(net.init(key))


def from_nnx(module: Any) -> Params:
    """The gradjax parameter pytree held by a module from :func:`flax_module`/:meth:`Net.to_nnx`.

    Args:
      module: the NNX module.

    Returns:
      The parameters (current values of its ``nnx.Param`` leaves), hidden blocks stacked.
    """
    blocks = [block.leaves() for block in module.blocks]
    hidden = {name: jnp.stack([b[name] for b in blocks[1:]]) for name in blocks[-1]}
    return layout.make_params(input=blocks[0], hidden=hidden, readout=module.readout.leaves())


_NNX_CLASS: Callable[..., Any] | None = None


def _nnx_module_class() -> Callable[..., Any]:
    # Defined lazily so importing gradjax does not import Flax.
    global _NNX_CLASS
    if _NNX_CLASS is None:
        from flax import nnx

        class GradjaxLeaves(nnx.Module):
            """One block's (or the readout's) leaves, each an ``nnx.Param`` attribute."""

            def __init__(self, leaves: layout.Layer):
                self.names = nnx.static(tuple(leaves))
                for name, value in leaves.items():
                    setattr(self, name, nnx.Param(value))

            def leaves(self) -> layout.Layer:
                return {name: getattr(self, name)[...] for name in self.names}

        class GradjaxBlock(GradjaxLeaves):
            """One block of a gradjax network, called on the previous block's output."""

            def __init__(self, net: Net, leaves: layout.Layer, residual: bool):
                super().__init__(leaves)
                self.net = nnx.static(net)
                self.residual = nnx.static(residual)

            def __call__(self, a: jax.Array) -> jax.Array:
                return self.net.block(self.leaves(), a, residual=self.residual)[2]

        class GradjaxNet(nnx.Module):
            """A gradjax network as an NNX module: a list of block modules and a readout.

            Each block is its own submodule, called in order, so a model boundary sees every
            block's output; the blocks run the pure :meth:`Net.block`.
            """

            def __init__(self, net: Net, params: Params):
                self.net = nnx.static(net)
                self.blocks = nnx.List(
                    [
                        GradjaxBlock(net, layout.layer(params, i), i > 0)
                        for i in range(layout.depth(params))
                    ]
                )
                self.readout = GradjaxLeaves(layout.readout_layer(params))

            def __call__(self, x: jax.Array) -> jax.Array:
                self.net.check_input(x)
                a = jnp.asarray(x, self.net.dtype)
                for block in self.blocks:
                    a = block(a)
                return _affine(self.readout.leaves(), a)

        _NNX_CLASS = GradjaxNet
    return _NNX_CLASS
