"""A training monitor: per-module gradient norms recorded inside ``jit``, and their history.

:func:`monitor` puts :func:`gradjax.training.optim.record_gradient_norms` in front of any Optax
optimiser with a grouping by module path, so every step's per-module gradient norms live in
the optimiser state, computed in the same compiled step as the update (a few reductions over
the gradients: a negligible cost next to the backward pass; see
``benchmarks/bench_monitor_overhead.py``). :class:`NormHistory` collects them over training
(from a ``lax.scan`` or a Python loop) and :func:`plot_norm_history` draws them.

Groups are module paths: the leaf path without the variable name, so a Linen
``{"params": {"Dense_0": {"kernel", "bias"}}}`` gives ``"Dense_0"``, an NNX state
``blocks/3/lin/kernel/value`` gives ``"blocks/3/lin"``, and a stacked module (found from its
leaves' shapes: an ``nn.scan`` trunk, gradjax's ``"hidden"`` leaves) gives one group per layer
(``"trunk/0"``, ...).

Example:
  >>> import jax, jax.numpy as jnp, optax, gradjax as gj
  >>> params = {"Dense_0": {"kernel": jnp.ones((3, 3)), "bias": jnp.zeros(3)}}
  >>> tx = gj.monitor(optax.sgd(0.1))
  >>> state = tx.init(params)
  >>> _, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
  >>> round(float(gj.latest_norms(state)["Dense_0"]), 4)  # sqrt(9 + 3)
  3.4641
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradjax.training.optim import GradientNormState, record_gradient_norms
from gradjax.utils.errors import check_real, invalid
from gradjax.utils.files import json_safe
from gradjax.utils.numerics import safe_group_norms
from gradjax.utils.pytree import pytree_dataclass, static_field
from gradjax.utils.tree_paths import layer_slices, natural_key


def module_group_norms(tree: Any, *, stacked: Any = None) -> dict[str, jax.Array]:
    """Gradient norms grouped by module path (one per layer for stacked modules).

    Groups are those of :func:`gradjax.utils.tree_paths.layer_slices`: stacked modules (an
    ``nn.scan`` trunk, an ``nnx.vmap`` stack, gradjax's ``"hidden"`` leaves) are found from the
    leaves' shapes, not from their names. Norms are overflow-safe
    (:func:`gradjax.utils.numerics.safe_group_norms`); a stacked module is reduced for all its
    layers at once (a few vector reductions rather than a handful of operations per layer:
    on a CPU the per-operation cost, not the arithmetic, is what a monitor adds to a step).

    Args:
      tree: a gradient pytree (Linen ``params``, NNX ``State``, gradjax params, any dict).
      stacked: prefixes (tuples of path entries) of the stacked subtrees; default: found
        from the shapes (:func:`gradjax.utils.tree_paths.stacked_prefixes`).

    Returns:
      ``{module path: Frobenius norm of all its leaves}``; a leaf at the top level is its own
      group.
    """
    slices = layer_slices(tree, stacked=stacked)
    flat = jax.tree_util.tree_leaves(tree)
    # group key -> (layer names or None, arrays with a leading row axis)
    parts: dict[tuple[str, bool], tuple[list[str] | None, list[jax.Array]]] = {}
    seen: set[int] = set()
    for s in slices:
        leaf = jnp.asarray(flat[s.index])
        if s.layer is None:
            parts.setdefault((s.group, False), (None, []))[1].append(leaf.reshape(1, -1))
        elif s.index not in seen:
            # All layers of one stacked leaf at once; its group name without the layer index.
            seen.add(s.index)
            # Keyed by layer 0's group: a stacked module's leaves are reduced together.
            names = [t.group for t in slices if t.index == s.index]
            key = (names[0], True)
            parts.setdefault(key, (names, []))[1].append(leaf.reshape(leaf.shape[0], -1))
    groups = []
    for _, leaves in parts.values():
        dtype = jnp.result_type(*leaves)
        if not jnp.issubdtype(dtype, jnp.inexact):
            dtype = jnp.float32
        groups.append([v.astype(dtype) for v in leaves])
    norms = safe_group_norms(groups) if groups else []
    out: dict[str, jax.Array] = {}
    for ((name, _), (layers, _)), norm in zip(parts.items(), norms, strict=True):
        if layers is None:
            out[name] = norm[0]
        else:
            for layer, layer_name in enumerate(layers):
                out[layer_name] = norm[layer]
    return out


def monitor(
    tx: optax.GradientTransformation | None = None,
    *,
    group_fn: Callable[[Any], dict[str, jax.Array]] | None = None,
) -> optax.GradientTransformation:
    """Wraps an optimiser so that every step records per-module gradient norms.

    Args:
      tx: the optimiser (``None``: record only, pass the gradients through).
      group_fn: ``group_fn(grads) -> {name: norm}``; default :func:`module_group_norms`.

    Returns:
      ``optax.chain(record_gradient_norms(group_fn), tx)``: the recorder sees the raw
      gradients; read them with :func:`latest_norms`.
    """
    recorder = record_gradient_norms(module_group_norms if group_fn is None else group_fn)
    return recorder if tx is None else optax.chain(recorder, tx)


def latest_norms(opt_state: Any) -> dict[str, jax.Array]:
    """The per-group norms of the latest step, found anywhere in an Optax state.

    Args:
      opt_state: the state of a chain that contains a :func:`monitor` (or
        ``record_gradient_norms``) transformation.

    Returns:
      ``{group: norm}``: arrays of that step, never a live reference (an ``nnx.Optimizer``
      keeps its state in ``nnx.Variable`` objects that later steps overwrite), with leading
      axes under ``vmap``.
    """
    found = [
        s
        for s in jax.tree_util.tree_leaves(
            opt_state, is_leaf=lambda s: isinstance(s, GradientNormState)
        )
        if isinstance(s, GradientNormState)
    ]
    if not found:
        raise invalid(
            "opt_state",
            type(opt_state).__name__,
            "the state of an optimiser built with gradjax.monitor(...)",
        )
    # A Variable's current value, not the Variable: the record must not follow later steps.
    return {k: jnp.asarray(_current(v)) for k, v in found[0].norms.items()}


def _current(value: Any) -> Any:
    get = getattr(value, "get_value", None)  # an nnx.Variable: its value now
    return get() if callable(get) else value


@pytree_dataclass
class NormHistory:
    """Per-group gradient norms over training steps.

    Attributes:
      steps: the step index of each record, ``(T,)``.
      norms: ``{group: (T,)}`` norms (non-finite values are kept: they are data).
      names: group names in display order (natural order of the module paths).
    """

    steps: jax.Array
    norms: dict[str, jax.Array]
    names: tuple[str, ...] = static_field(default=())

    @classmethod
    def from_stacked(
        cls, norms: Mapping[str, Any], *, steps: Any = None, order: Sequence[str] | None = None
    ) -> NormHistory:
        """A history from norms stacked over steps (e.g. the ``ys`` of a ``lax.scan``).

        Args:
          norms: ``{group: (T,)}``.
          steps: step indices (default ``0..T-1``).
          order: display order (default natural order of the names).

        Returns:
          The :class:`NormHistory`.
        """
        if not norms:
            raise invalid("norms", "{}", "at least one group")
        arrays = {k: np.asarray(v) for k, v in norms.items()}
        lengths = {v.shape[0] if v.ndim else 0 for v in arrays.values()}
        if len(lengths) != 1 or 0 in lengths:
            raise invalid("norms", sorted(lengths), "arrays of one common length T >= 1")
        (t,) = lengths
        steps = np.arange(t) if steps is None else np.asarray(steps)
        if steps.shape != (t,):
            raise invalid("steps.shape", steps.shape, f"({t},)")
        names = tuple(sorted(arrays, key=natural_key)) if order is None else tuple(order)
        if sorted(names) != sorted(arrays):
            raise invalid("order", names, "a permutation of the group names")
        return cls(steps=steps, norms=arrays, names=names)

    @classmethod
    def from_states(cls, states: Sequence[Any], *, steps: Any = None) -> NormHistory:
        """A history from a list of optimiser states (or of ``latest_norms`` dicts).

        Args:
          states: one per recorded step.
          steps: step indices (default ``0..T-1``).

        Returns:
          The :class:`NormHistory`.
        """
        if len(states) == 0:
            raise invalid("states", "[]", "at least one optimiser state")
        dicts = [s if isinstance(s, Mapping) else latest_norms(s) for s in states]
        stacked = {k: np.stack([np.asarray(d[k]) for d in dicts]) for k in dicts[0]}
        return cls.from_stacked(stacked, steps=steps)

    def array(self) -> np.ndarray:
        """The norms as ``(T, G)`` in :attr:`names` order."""
        return np.stack([np.asarray(self.norms[n], np.float64) for n in self.names], axis=-1)

    def global_norms(self) -> np.ndarray:
        """The global gradient norm of every step, ``sqrt(sum_g norm_g^2)``, ``(T,)``."""
        with np.errstate(over="ignore", invalid="ignore"):
            return np.sqrt(np.sum(np.square(self.array()), axis=-1))

    def clip_threshold(self, percentile: float = 90.0) -> float:
        """The ``percentile``-th percentile of the finite global norms (a clip threshold)."""
        check_real("percentile", percentile, minimum=0.0)
        if percentile > 100:
            raise invalid("percentile", percentile, "a number in [0, 100]")
        g = self.global_norms()
        g = g[np.isfinite(g)]
        return float(np.percentile(g, percentile)) if g.size else math.nan

    def first_nonfinite_step(self) -> int | None:
        """The first step whose gradient norm is NaN or infinite, or ``None``."""
        bad = ~np.isfinite(self.global_norms())
        return int(np.asarray(self.steps)[np.argmax(bad)]) if bad.any() else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe data: steps, groups and norms (non-finite as strings)."""
        return json_safe(
            {
                "steps": np.asarray(self.steps),
                "groups": list(self.names),
                "norms": {n: np.asarray(self.norms[n], np.float64) for n in self.names},
                "global": self.global_norms(),
            }
        )

    def plot(self, **kwargs: Any):
        """See :func:`plot_norm_history`."""
        return plot_norm_history(self, **kwargs)


def plot_norm_history(
    history: NormHistory,
    *,
    max_groups: int = 8,
    clip_percentile: float | None = 90.0,
    title: str | None = None,
):
    """Per-group gradient norms over training.

    Left: up to ``max_groups`` groups (evenly spread from input to output, coloured in
    order) and the global norm, log scale, with the suggested clip threshold. Right: every
    group's log10 norm as a heat map over steps.

    Args:
      history: a :class:`NormHistory`.
      max_groups: lines drawn on the left panel.
      clip_percentile: draw the clip threshold at this percentile (``None``: don't).
      title: figure title.

    Returns:
      A matplotlib ``Figure``.
    """
    from gradjax.utils.plotting import styled

    return styled(_plot_history)(history, max_groups, clip_percentile, title)


def _plot_history(history: NormHistory, max_groups: int, clip_percentile, title):
    from gradjax.utils.plotting import new_figure, sequential_colors

    arr = history.array()
    steps = np.asarray(history.steps)
    g = len(history.names)
    pick = np.unique(np.linspace(0, g - 1, min(max_groups, g)).round().astype(int))
    cols = sequential_colors(len(pick))
    fig, axes = new_figure(1, 2, width=7.2, height=3.4)
    ax = axes[0]
    positive = lambda v: np.where(np.isfinite(v) & (v > 0), v, np.nan)
    for c, j in zip(cols, pick, strict=True):
        ax.plot(steps, positive(arr[:, j]), color=c, label=history.names[j][-18:], linewidth=1.0)
    ax.plot(steps, positive(history.global_norms()), color="black", label="global", linewidth=1.4)
    if clip_percentile is not None:
        clip = history.clip_threshold(clip_percentile)
        if math.isfinite(clip):
            ax.axhline(
                clip,
                color="0.3",
                linestyle="--",
                linewidth=0.8,
                label=f"p{clip_percentile:g} = {clip:.3g}",
            )
    ax.set(
        yscale="log",
        xlabel="training step",
        ylabel=r"$\|\nabla L\|$ per group",
        title="gradient norms over training",
    )
    # Outside the axes: the lines fill the panel.
    fig.legend(
        *ax.get_legend_handles_labels(),
        loc="outside lower center",
        fontsize=6.5,
        ncol=min(6, len(pick) + 2),
    )
    ax = axes[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        img = np.log10(positive(arr)).T
    mesh = ax.imshow(
        img,
        aspect="auto",
        origin="lower",
        cmap="viridis",
        interpolation="nearest",
        extent=(steps[0] - 0.5, steps[-1] + 0.5, -0.5, g - 0.5),
    )
    fig.colorbar(mesh, ax=ax, label=r"$\log_{10}\|\nabla L\|$")
    ax.set(xlabel="training step", ylabel="group (input side at bottom)", title="all groups")
    ax.grid(False)
    if g <= 12:
        ax.set_yticks(np.arange(g), [n[-16:] for n in history.names], fontsize=6)
    fig.suptitle(title or f"per-group gradient norms, {g} groups, {len(steps)} steps", fontsize=9)
    return fig
