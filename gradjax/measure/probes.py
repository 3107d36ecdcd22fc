"""Probes for the sweep engine: the :class:`Probe` type and ready-made probes.

A probe measures one network: ``probe(params, key) -> pytree of arrays``. Each ready-made probe
draws its own inputs from ``key`` (the sweep hands every scale of a seed the same key, so
neighbouring scales see the same inputs) and calls the diagnostics; the engine itself knows
none of them, only the fields of :class:`Probe`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradjax.boundary.scaling import Sweepable
from gradjax.measure.gradients import LossFn, get_loss, layer_gradient_norms
from gradjax.measure.jacobians import batch_layer_jacobians, expected_factors, layer_jacobians
from gradjax.measure.spectra import singular_values, summarize_spectrum
from gradjax.nets.models import Net, Params
from gradjax.utils.errors import invalid
from gradjax.utils.lapack import after
from gradjax.utils.numerics import safe_norm


class Probe(NamedTuple):
    """A measurement of one network, in the style of optax's ``GradientTransformation``.

    A probe has up to two parts. ``per_network(params, key)`` runs on one network (the sweep
    vmaps it over seeds and scales); ``finalize(intermediates)``, when present, turns the
    intermediates of a whole tile of networks (any leading axes) into the results, as a
    compiled program of its own. That split is for LAPACK-bound steps such as singular values,
    which run as one batched call per tile (see :mod:`gradjax.utils.lapack`).

    Calling the probe, ``probe(params, key)``, runs both parts on one network.

    Attributes:
      per_network: ``(params, key) -> pytree``, pure and jit/vmap-safe.
      finalize: ``intermediates -> results`` broadcasting over leading axes, or ``None``.
      lazy_scales: ``per_network`` works on the lazy parameters of
        ``Net.scale(..., lazy=True)`` (it runs the network forward and differentiates with
        respect to activations, never reading ``W`` itself). The sweep then keeps a seed's
        weights shared across its scale grid: a grid of P scales costs matrix-matrix
        products instead of P rescaled weight copies.
      labels: names along a result's last axis, as ``((result name, (label, ...)), ...)``
        (e.g. the block names of ``block_grad_norms``); the sweep records them in its
        metadata (``result.meta["labels"]``).

    Example:
      >>> import gradjax as gj, jax
      >>> net = gj.build(gj.NetConfig(depth=4, width=8))
      >>> def outputs(params, key):
      ...     return net.apply(params, jax.random.normal(key, (2, 8)))
      >>> probe = gj.probes.Probe(per_network=outputs)
      >>> probe(net.init(jax.random.key(0)), jax.random.key(1)).shape
      (2, 1)
    """

    per_network: Callable[[Params, jax.Array], Any]
    finalize: Callable[[Any], Any] | None = None
    lazy_scales: bool = False
    labels: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def __call__(self, params: Params, key: jax.Array) -> Any:
        out = self.per_network(params, key)
        return out if self.finalize is None else self.finalize(out)


def as_probe(probe: Any) -> Probe:
    """A :class:`Probe` from a probe or a plain function ``(params, key) -> pytree``.

    Args:
      probe: a :class:`Probe`, or a callable wrapped as ``Probe(per_network=probe)``.

    Returns:
      The probe.

    Raises:
      GradjaxInputError: if ``probe`` is neither, or its fields have the wrong types.
    """
    if isinstance(probe, Probe):
        if not callable(probe.per_network):
            raise invalid("probe.per_network", probe.per_network, "a callable (params, key)")
        if probe.finalize is not None and not callable(probe.finalize):
            raise invalid("probe.finalize", probe.finalize, "None or a callable(intermediates)")
        if not isinstance(probe.lazy_scales, bool):
            raise invalid("probe.lazy_scales", probe.lazy_scales, "True or False")
        return probe
    if callable(probe):
        return Probe(per_network=probe)
    raise invalid(
        "probe", probe, "a gradjax.measure.probes.Probe or a callable (params, key) -> pytree"
    )


def gradient_probe(net: Net, *, batch: int = 16, loss: str | LossFn = "mse") -> Probe:
    """Per-layer gradient norms on a batch of N(0, 1) inputs with N(0, 1) targets.

    Args:
      net: the network.
      batch: examples per probe.
      loss: ``mse`` (targets drawn N(0, 1)) or a callable of ``(output, target)``.

    Returns:
      ``probe(params, key) -> GradientNorms``.
    """

    def per_network(params: Params, key: jax.Array):
        kx, ky = jax.random.split(key)
        x = jax.random.normal(kx, (batch, net.cfg.input_dim), net.dtype)
        y = jax.random.normal(ky, (batch, net.cfg.out_dim), net.dtype)
        return layer_gradient_norms(net, params, x, y, loss=loss)

    return Probe(per_network=per_network)


def spectrum_probe(net: Net, *, batch: int = 8) -> Probe:
    """Singular-value summaries of every layer Jacobian at one N(0, 1) input.

    Without normalisation the Jacobians come from their exact closed form
    ``diag(phi'(z_l)) W_l`` (plus the identity of residual blocks; see
    :func:`gradjax.measure.jacobians.expected_factors`), O(N^2) per layer instead of the O(N^3) of
    autodiff; with
    LayerNorm by autodiff; with BatchNorm they are those of the whole batch map over ``batch``
    inputs.

    The probe works on lazily scaled parameters (``lazy_scales``) and computes the singular
    values in its ``finalize`` step, one batched LAPACK program per sweep chunk (see
    :func:`gradjax.sweep`); called directly, ``probe(params, key)`` does both.

    Args:
      net: the network.
      batch: batch size used only for BatchNorm networks.

    Returns:
      ``probe(params, key) -> {"first": SpectrumSummary, "hidden": SpectrumSummary}``
      (hidden with a leading layer axis).
    """

    def jacobians(params: Params, key: jax.Array):
        if net.cfg.norm == "batch":
            x = jax.random.normal(key, (batch, net.cfg.input_dim), net.dtype)
            jac = batch_layer_jacobians(net, params, x)
        elif net.cfg.norm is None:
            x = jax.random.normal(key, (net.cfg.input_dim,), net.dtype)
            jac = expected_factors(net, params, x)
        else:
            x = jax.random.normal(key, (net.cfg.input_dim,), net.dtype)
            jac = layer_jacobians(net, params, x)
        return {"first": jac.first, "hidden": jac.hidden}

    def summaries(jac):
        # Leading axes broadcast: one network, or a whole chunk of them. The first block's
        # SVDs wait for the hidden ones (concurrent LAPACK calls can deadlock), so the large
        # hidden batch is the program's first step and runs on every core (gradjax.utils.lapack).
        hidden = singular_values(jac["hidden"])
        first = singular_values(after(jac["first"], hidden))
        return {"first": summarize_spectrum(first), "hidden": summarize_spectrum(hidden)}

    return Probe(per_network=jacobians, finalize=summaries, lazy_scales=True)


def combine(**probes: Probe | Callable) -> Probe:
    """Runs several probes on the same network; each gets its own key, named by keyword.

    The parts are merged field by field: ``per_network`` runs every part's ``per_network``,
    ``finalize`` applies each part's ``finalize`` to its own subtree (so a two-part probe keeps
    its batched finalize program inside the combination), and the combination takes lazy
    scales when any part does, materialising the parameters (:meth:`gradjax.Net.materialize`)
    for the parts that do not.

    Args:
      **probes: name -> :class:`Probe` (or a plain function, see :func:`as_probe`).

    Returns:
      A :class:`Probe` whose results are ``{name: result}``.
    """
    if not probes:
        raise invalid("probes", probes, "at least one name=probe")
    parts = {name: as_probe(probe) for name, probe in probes.items()}
    names = sorted(parts)
    lazy = any(part.lazy_scales for part in parts.values())

    def per_network(params: Params, key: jax.Array):
        keys = jax.random.split(key, len(names))
        plain = Net.materialize(params) if lazy else params
        return {
            name: parts[name].per_network(params if parts[name].lazy_scales else plain, k)
            for name, k in zip(names, keys, strict=True)
        }

    def finalize(intermediates):
        return {
            name: intermediates[name]
            if parts[name].finalize is None
            else parts[name].finalize(intermediates[name])
            for name in names
        }

    two_part = any(part.finalize is not None for part in parts.values())
    return Probe(per_network=per_network, finalize=finalize if two_part else None, lazy_scales=lazy)


def layer_gradient_and_spectrum_probe(net: Net, *, batch: int = 16) -> Probe:
    """Gradient norms and Jacobian spectra, the two views of the chain rule, in one probe."""
    return combine(gradients=gradient_probe(net, batch=batch), spectra=spectrum_probe(net))


def block_gradient_probe(net: Sweepable, batch: tuple[Any, Any], loss_fn: Any) -> Any:
    """A sweep probe: ``||dL/da_l||`` for every block of a :class:`Sweepable` model.

    Args:
      net: the model (see :func:`gradjax.boundary.sweepable`).
      batch: ``(inputs, targets)`` (the same inputs for every network of the sweep).
      loss_fn: ``"mse"``, ``"xent"`` or ``loss(output, targets) -> scalar``.

    Returns:
      A :class:`gradjax.measure.probes.Probe` whose results are ``{"loss": (), "block_grad_norms":
      (blocks,)}``, blocks input side first (for an ``nnx.scan`` stack, its layers);
      ``growth`` of the series (e.g. :func:`gradjax.utils.fitting.growth_per_layer`)
      locates the critical init (growth 1). A model with recurrences over time also gets
      ``"step_grad_norms": (recurrences, steps)``, ``||dL/dh_t||`` in running order.
    """
    from gradjax.boundary.scaling import Sweepable

    if not isinstance(net, Sweepable):
        raise invalid(
            "net", type(net).__name__, "a gradjax.boundary.Sweepable (gj.boundary.sweepable(...))"
        )
    from gradjax.measure.fit_checks import checked_output

    x, y = batch
    loss = get_loss(loss_fn)
    boundary = net.boundary
    probes = boundary.zero_probes(x)
    checked_output(boundary, loss, x, y, probes)  # one line for a batch that does not fit
    blocks = boundary.blocks(x)
    scans = boundary.scans(x)
    stacks = [k for k, s in enumerate(scans) if s.axis == "layers"]
    times = [k for k, s in enumerate(scans) if s.axis == "time"]

    def per_network(params, key):
        del key  # deterministic: the batch is fixed

        def objective(e, t):
            if not scans:
                return loss(boundary.apply(params, x, e), y)
            return loss(boundary.apply_perturbed(params, x, e, t, state=boundary.state), y)

        zeros = [[jnp.zeros(s.shape, s.dtype) for s in scan.shapes] for scan in scans]
        value, (ge, gt) = jax.value_and_grad(objective, argnums=(0, 1))(probes, zeros)
        # Per step of each perturbed scan: the hidden state's norm (all carry values when
        # the step emits none of them).
        steps = [_step_norms(scan, g) for scan, g in zip(scans, gt, strict=True)]
        if stacks:  # the layers of scanned stacks are the blocks
            norms = jnp.concatenate([steps[k] for k in stacks])
        else:
            norms = []
            for b in blocks:
                leaves = jax.tree_util.tree_leaves(ge[b.site])
                if b.layer is not None:
                    leaves = [v[b.layer] for v in leaves]
                norms.append(safe_norm(jnp.concatenate([jnp.ravel(v) for v in leaves])))
            norms = jnp.stack(norms) if norms else jnp.zeros((0,), value.dtype)
        out = {"loss": value, "block_grad_norms": norms}
        if times:
            longest = max(scans[k].length for k in times)
            out["step_grad_norms"] = jnp.stack(
                [_padded(steps[k], longest) for k in times]
            )  # (recurrences, steps), running order, NaN past a shorter one's end
        return out

    labels = (("block_grad_norms", boundary.block_names(x)),)
    return Probe(per_network=per_network, labels=labels)


def block_spectra_probe(
    net: Sweepable, x: Any, *, lanczos_steps: int = 32, probes: int = 32
) -> Probe:
    """A sweep probe: the block-to-block Jacobian spectra of a :class:`Sweepable` model.

    The matrix-free measurement of :func:`gradjax.measure.block_spectra.block_spectra` for
    every network of the sweep, so dynamical isometry (``sigma_max`` and mean ``sigma^2``
    near 1 for every block) can be read over seeds x kernel scale.

    Args:
      net: the model (see :func:`gradjax.boundary.sweepable`).
      x: the inputs (the same for every network of the sweep).
      lanczos_steps: Lanczos steps per map.
      probes: Hutchinson probes per map.

    Returns:
      A :class:`Probe` whose results are ``{"block_sigma_max": (maps,), "block_mean_sq":
      (maps,), "io_sigma_max": (), "io_mean_sq": ()}``, each the mean over the examples
      (over the whole batch where examples mix, as at the model's own parameters); maps are
      named by the block each produces (the second block onwards).
    """
    from gradjax.boundary.scaling import Sweepable
    from gradjax.measure import block_spectra as bs

    if not isinstance(net, Sweepable):
        raise invalid(
            "net", type(net).__name__, "a gradjax.boundary.Sweepable (gj.boundary.sweepable(...))"
        )
    found = bs.block_spectra(net.boundary, x, lanczos_steps=lanczos_steps, probes=probes)
    names, build = bs.block_maps(net.boundary, x)
    batch = found.sigma_max_examples.shape[1] if not found.coupled else 1
    options = (lanczos_steps, probes, 0, 0, found.coupled, batch)

    def per_network(params, key):
        del key  # deterministic: the batch and the start vectors are fixed
        got = bs.measure_maps(build(params, net.boundary.state), *options)
        sigma, mean_sq = got["sigma_max"].mean(axis=1), got["mean_sq"].mean(axis=1)
        return {
            "block_sigma_max": sigma[:-1],
            "block_mean_sq": mean_sq[:-1],
            "io_sigma_max": sigma[-1],
            "io_mean_sq": mean_sq[-1],
        }

    labels = (("block_sigma_max", names[1:]), ("block_mean_sq", names[1:]))
    return Probe(per_network=per_network, labels=labels)


def _step_norms(scan: Any, grads: list[jax.Array]) -> jax.Array:
    """``||dL/dh_t||`` per step of a perturbed scan, in running order."""
    hidden = scan.hidden if any(scan.hidden) else (True,) * len(scan.hidden)
    chosen = [g.reshape(scan.length, -1) for g, h in zip(grads, hidden, strict=True) if h]
    norms = safe_norm(jnp.concatenate(chosen, axis=1), axis=1)
    return norms[::-1] if scan.reverse else norms


def _padded(values: jax.Array, length: int) -> jax.Array:
    return jnp.pad(values, (0, length - values.shape[0]), constant_values=jnp.nan)
