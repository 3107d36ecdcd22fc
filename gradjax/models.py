"""gradjax's networks: pure ``init``/``apply`` over plain parameter pytrees.

Parameters are a dict with three groups::

    {"input":   {"W": (N, D), "b": (N,), ...},          # block 1, never residual
     "hidden":  {"W": (L-1, N, N), "b": (L-1, N), ...}, # blocks 2..L, stacked
     "readout": {"W": (O, N), "b": (O,)}}

plus ``"gamma"``/``"beta"`` (norm scale and shift) and ``"gain"`` (SkipInit) where the config
asks for them. Stacking the hidden blocks lets ``lax.scan`` run a depth-1000 network with one
compiled block, and lets per-layer diagnostics ``vmap`` over the layer axis.

Why plain pytrees and not Flax modules at the core: every diagnostic differentiates one block
at a time with respect to its input, scales weights under ``vmap`` for common random numbers,
and scans over depth; pure functions over arrays make all three direct. Flax NNX is the
boundary to Flax code: :meth:`Net.to_nnx` wraps parameters in an ``nnx.Module`` that a Flax
training loop (or :func:`gradjax.diagnose`) can use, and :func:`from_nnx` takes them back.
This is the only module that imports Flax for gradjax's own networks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from gradjax.activations import get_activation
from gradjax.config import NetConfig
from gradjax.errors import GradjaxInputError, check_key, invalid
from gradjax.initializers import base_weight, scheme_factor
from gradjax.results import pytree_dataclass

Params = dict[str, dict[str, jax.Array]]


@pytree_dataclass
class ForwardTrace:
    """Everything a forward pass computes, per block.

    Attributes:
      output: readout output, ``(..., out_dim)``.
      preact: ``z_l = W_l a_{l-1} + b_l`` for every block, ``(depth, ..., width)``.
      normed: the activation's input ``u_l`` (``z_l`` after the norm; ``z_l`` without one).
      act: block outputs ``a_l``, ``(depth, ..., width)``.
    """

    output: jax.Array
    preact: jax.Array
    normed: jax.Array
    act: jax.Array


class Net:
    """A :class:`~gradjax.config.NetConfig` made into pure functions.

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
        # independent LAPACK calls in one program can deadlock (see gradjax.lapack).
        draw = lambda k, rows, cols, prev=(): base_weight(
            k, cfg.init, rows, cols, self.dtype, order_after=prev
        )
        hidden_keys = jax.random.split(k_hid, cfg.depth - 1)
        w_in = draw(k_in, n, d)
        w_hidden = jax.vmap(lambda k: draw(k, n, n, w_in))(hidden_keys)
        w_out = draw(k_out, cfg.out_dim, n, w_hidden)
        params: Params = {
            "input": {"W": w_in, "b": jax.random.normal(kb_in, (n,), self.dtype)},
            "hidden": {
                "W": w_hidden.reshape(cfg.depth - 1, n, n),
                "b": jax.random.normal(kb_hid, (cfg.depth - 1, n), self.dtype),
            },
            "readout": {
                "W": w_out,
                "b": jax.random.normal(kb_out, (cfg.out_dim,), self.dtype),
            },
        }
        if cfg.norm is not None and cfg.norm_affine:
            for group, lead in (("input", ()), ("hidden", (cfg.depth - 1,))):
                params[group]["gamma"] = jnp.ones((*lead, n), self.dtype)
                params[group]["beta"] = jnp.zeros((*lead, n), self.dtype)
        if cfg.residual == "skipinit":
            params["hidden"]["gain"] = jnp.zeros((cfg.depth - 1,), self.dtype)
        return params

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
          lazy: keep ``W`` and ``b`` unscaled and add the scales as leaves ``w_scale`` and
            ``b_scale`` (per block; stacked for the hidden group), which :meth:`block`
            applies to the block's output instead of its weights. Under ``vmap`` over the
            scales the weights then stay shared: a grid of scales costs one matrix-matrix
            product per layer instead of one rescaled weight copy per grid point. Lazy
            parameters are for forward passes and derivatives with respect to activations;
            :meth:`materialize` turns them into ordinary ones.

        Returns:
          Parameters with ``W <- sigma_w * scheme_factor * W`` and ``b <- sigma_b * b`` (or
          the lazy form).
        """
        cfg = self.cfg
        sw = cfg.sigma_w if sigma_w is None else sigma_w
        sb = cfg.sigma_b if sigma_b is None else sigma_b
        fans = {
            "input": (cfg.input_dim, cfg.width),
            "hidden": (cfg.width, cfg.width),
            "readout": (cfg.width, cfg.out_dim),
        }
        out: Params = {}
        for group, leaves in base.items():
            fan_in, fan_out = fans[group]
            factor = scheme_factor(
                cfg.init, fan_in, fan_out, activation=cfg.activation, sigma_b=cfg.sigma_b
            )
            out[group] = dict(leaves)
            w_scale = jnp.asarray(sw * factor, self.dtype)
            b_scale = jnp.asarray(sb, self.dtype)
            if lazy:
                # One scale per block, so lax.scan and layer_params slice them like W.
                lead = leaves["W"].shape[:-2]
                out[group]["w_scale"] = jnp.broadcast_to(w_scale, lead)
                out[group]["b_scale"] = jnp.broadcast_to(b_scale, lead)
            else:
                out[group]["W"] = leaves["W"] * w_scale
                out[group]["b"] = leaves["b"] * b_scale
        return out

    @staticmethod
    def is_lazy(params: Params) -> bool:
        """Whether ``params`` are in the lazy form of :meth:`scale` (``lazy=True``)."""
        return any("w_scale" in leaves for leaves in params.values())

    @staticmethod
    def materialize(params: Params) -> Params:
        """Folds lazy scales into ``W`` and ``b``; ordinary parameters come back unchanged.

        Args:
          params: parameters, lazy or not.

        Returns:
          Ordinary parameters (no ``w_scale``/``b_scale`` leaves).
        """
        out: Params = {}
        for group, leaves in params.items():
            leaves = dict(leaves)
            if "w_scale" in leaves:
                leaves["W"] = leaves["W"] * leaves.pop("w_scale")[..., None, None]
                leaves["b"] = leaves["b"] * leaves.pop("b_scale")[..., None]
            out[group] = leaves
        return out

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

    def block(
        self,
        layer: dict[str, jax.Array],
        a: jax.Array,
        *,
        residual: bool,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """One block: ``a_{l-1} -> (z_l, u_l, a_l)``.

        Args:
          layer: one block's parameters (``W`` of shape (out, in), ``b``, optional norm and
            gain leaves).
          a: the block input, ``(in,)`` or ``(batch, in)``. BatchNorm needs the batch form:
            its statistics are those of this batch (train mode), so examples are coupled.
          residual: whether this block adds its input (the input block never does).

        Returns:
          ``(z, u, a_next)``: pre-activation, normalised pre-activation, block output.
        """
        cfg = self.cfg
        z = _affine(layer, a)
        u = self._normalise(z, layer)
        h = self.activation(u)
        if not residual or cfg.residual is None:
            return z, u, h
        gain = layer["gain"] if cfg.residual == "skipinit" else cfg.alpha
        return z, u, a + gain * h

    def _normalise(self, z: jax.Array, layer: dict[str, jax.Array]) -> jax.Array:
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
            u = u * layer["gamma"] + layer["beta"]
        return u

    def layer_params(self, params: Params, index: int) -> dict[str, jax.Array]:
        """The parameters of block ``index`` (0 = the input block, depth-1 = the last).

        Args:
          params: the network's parameters.
          index: a Python int in ``[0, depth)``.

        Returns:
          That block's parameter dict, as :meth:`block` takes it.
        """
        if isinstance(index, bool) or not isinstance(index, int):
            raise invalid("index", index, f"an int in [0, {self.cfg.depth})")
        if not 0 <= index < self.cfg.depth:
            raise invalid("index", index, f"an int in [0, {self.cfg.depth})")
        if index == 0:
            return params["input"]
        return jax.tree.map(lambda leaf: leaf[index - 1], params["hidden"])

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
        z0, u0, a0 = self.block(params["input"], x, residual=False)
        a0 = a0 + perturbations[0]

        def step(a, layer_and_eps):
            layer, eps = layer_and_eps
            z, u, a_next = self.block(layer, a, residual=True)
            a_next = a_next + eps
            return a_next, (z, u, a_next)

        a_last, (zs, us, acts) = jax.lax.scan(step, a0, (params["hidden"], perturbations[1:]))
        out = _affine(params["readout"], a_last)
        stack = lambda first, rest: jnp.concatenate([first[None], rest], axis=0)
        return ForwardTrace(
            output=out, preact=stack(z0, zs), normed=stack(u0, us), act=stack(a0, acts)
        )

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        """The network's output for input ``x`` (``(input_dim,)`` or ``(batch, input_dim)``)."""
        return self.forward(params, x).output

    # ------------------------------------------------------------------ Flax boundary

    def to_nnx(self, params: Params) -> Any:
        """Wraps parameters in a Flax NNX module whose ``__call__`` is :meth:`apply`.

        Args:
          params: the network's parameters.

        Returns:
          An ``nnx.Module``; ``nnx.split`` / ``nnx.state`` / ``nnx.Optimizer`` work on it.
        """
        return _nnx_module_class()(self, params)


def _affine(layer: dict[str, jax.Array], a: jax.Array) -> jax.Array:
    """``W a + b``, with lazy scales applied to the product (see :meth:`Net.scale`)."""
    # a @ W^T as one contraction of a's last axis with W's input axis: no explicit transpose
    # of W, which XLA would otherwise materialise (a full weight copy) in the transposed
    # products of VJPs inside loops such as Lanczos.
    product = jax.lax.dot_general(a, layer["W"], (((a.ndim - 1,), (1,)), ((), ())))
    if "w_scale" not in layer:
        return product + layer["b"]
    # Scaling the product, not W, keeps W unbatched under a vmap over the scales, so the
    # product of a batch of activations with the shared W is one matrix-matrix product.
    return product * layer["w_scale"] + layer["b"] * layer["b_scale"]


def build(cfg: NetConfig) -> Net:
    """Builds the pure network of a config.

    Args:
      cfg: a :class:`~gradjax.config.NetConfig`.

    Returns:
      The :class:`Net`.
    """
    return Net(cfg)


def from_nnx(module: Any) -> Params:
    """The gradjax parameter pytree held by a module made with :meth:`Net.to_nnx`."""
    return {
        group: {leaf: getattr(module, f"{group}_{leaf}")[...] for leaf in leaves}
        for group, leaves in module.layout.items()
    }


_NNX_CLASS: Callable[..., Any] | None = None


def _nnx_module_class() -> Callable[..., Any]:
    # Defined lazily so importing gradjax does not import Flax.
    global _NNX_CLASS
    if _NNX_CLASS is None:
        from flax import nnx

        class GradjaxNet(nnx.Module):
            """A gradjax network as an NNX module; its leaves are ``nnx.Param``."""

            def __init__(self, net: Net, params: Params):
                self.net = nnx.static(net) if hasattr(nnx, "static") else net
                self.layout = {group: tuple(leaves) for group, leaves in params.items()}
                for group, leaves in params.items():
                    for leaf, value in leaves.items():
                        setattr(self, f"{group}_{leaf}", nnx.Param(value))

            def __call__(self, x: jax.Array) -> jax.Array:
                return self.net.apply(from_nnx(self), x)

        _NNX_CLASS = GradjaxNet
    return _NNX_CLASS
