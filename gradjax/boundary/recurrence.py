"""Recurrences over time and scanned stacks of layers, found in the model's computation.

Every recurrent model, however it is written (Linen ``nn.RNN`` or ``nn.scan`` over time, an
NNX scan, ``jax.lax.scan`` in a pure function), reaches XLA as a ``scan`` whose carry is the
hidden state; so does every stack of layers applied with ``nnx.scan`` or ``nn.scan``, whose
carry is the activation between layers. This module reads the traced program (a jaxpr) of
the model's forward pass:

* :func:`analyse` finds both: a scan *over time* scans the model's inputs (or constants);
  a scan *over layers* scans parameters, state or probes and no input.
* :func:`perturbed_call` runs the same program with a zero perturbation ``e_t`` added to the
  carry at every step ``t`` of the chosen scans (where the step also emits the carry as its
  output, there too), so ``dL/de_t`` is ``dL/dh_t``: the gradient reaching the hidden state
  of step ``t`` (or the output of layer ``t``) by every path. The rest of the program is
  bound unchanged.

The analysis also tells which flat inputs feed a scan's loop-invariant operands: a probe
among them sits on a submodule run inside the recurrence (a cell's gate), which is a layer of
one step, not a block of the model's depth.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend import core as jcore

__all__ = ["Scan", "analyse", "find_time_scans", "kernel_depths", "perturbed_call"]

# Call-like primitives whose inner program is searched (and, on the way to a scan over time,
# evaluated inline); the parameter that holds the inner program.
_CALLS = {
    "pjit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "checkpoint": "jaxpr",
    "remat": "jaxpr",
}


@dataclasses.dataclass(frozen=True)
class Scan:
    """One scan over time, or over a stack of layers, in a traced forward pass.

    Attributes:
      axis: ``"time"`` or ``"layers"``.
      path: the equation's index, through the call equations that hold it.
      name: where it runs (the name stack of the module that called it, or ``scan_<i>``).
      length: the number of steps.
      reverse: whether it runs from the last step to the first.
      perturbed: the positions, among the carry, of the floating-point carry values.
      hidden: for each perturbed carry value, whether the step also emits it as an output
        (the hidden state ``h``; an LSTM's cell state ``c`` is not emitted).
      shapes: the perturbations' shapes and dtypes, ``(length, *carry_shape)``.
      consts_from: bit mask of the flat inputs that the scan's loop-invariant operands
        depend on.
      xs_from: bit mask of the flat inputs that its scanned-over operands depend on.
    """

    axis: str
    path: tuple[int, ...]
    name: str
    length: int
    reverse: bool
    perturbed: tuple[int, ...]
    hidden: tuple[bool, ...]
    shapes: tuple[jax.ShapeDtypeStruct, ...]
    consts_from: int
    xs_from: int

    def zero_perturbations(self) -> list[jax.Array]:
        """Zeros for :func:`perturbed_call` (one array per perturbed carry value)."""
        return [jnp.zeros(s.shape, s.dtype) for s in self.shapes]


def _inner(eqn: Any) -> jcore.ClosedJaxpr | None:
    """The inner program of a call-like equation, closed; ``None`` for other equations."""
    param = _CALLS.get(eqn.primitive.name)
    if param is None or param not in eqn.params:
        return None
    inner = eqn.params[param]
    return inner if isinstance(inner, jcore.ClosedJaxpr) else jcore.ClosedJaxpr(inner, ())


def _floating(aval: Any) -> bool:
    return hasattr(aval, "dtype") and jnp.issubdtype(aval.dtype, jnp.floating)


def find_time_scans(closed: jcore.ClosedJaxpr, input_mask: int) -> tuple[Scan, ...]:
    """The scans over time of a traced program, in execution order.

    Args:
      closed: the program (``jax.make_jaxpr`` of the forward pass on flat inputs).
      input_mask: bit mask of the flat inputs that are the model's inputs ``x``.

    Returns:
      Every scan of at least two steps with a floating-point carry whose scanned-over
      operands each depend on the inputs or on nothing (constants); scans nested in another
      scan are not searched.
    """
    return tuple(s for s in analyse(closed, input_mask, 0)[0] if s.axis == "time")


def analyse(
    closed: jcore.ClosedJaxpr, input_mask: int, probe_mask: int
) -> tuple[tuple[Scan, ...], dict[int, int]]:
    """Every scan over time or over layers, and what each probe is added to.

    Args:
      closed: the program.
      input_mask: bit mask of the flat inputs that are the model's inputs.
      probe_mask: bit mask of the flat inputs that are zero probes.

    Returns:
      The scans (:class:`Scan`, execution order; scans nested in another scan are not
      searched), and for each probe input (by index) the mask of the flat inputs
      that the value it is first added to depends on: a probe whose value depends on
      another probe's sits downstream of it.
    """
    found: list[Scan] = []
    added: dict[int, int] = {}
    deps = [1 << i for i in range(len(closed.jaxpr.invars))]
    _search(closed.jaxpr, deps, (input_mask, probe_mask), (), found, added)
    names = [s.name for s in found]
    # Two scans under one module (a bidirectional wrapper's directions) get numbered names.
    scans = tuple(
        dataclasses.replace(s, name=f"{s.name}#{names[:i].count(s.name)}")
        if names.count(s.name) > 1
        else s
        for i, s in enumerate(found)
    )
    return scans, added


def _search(
    jaxpr: Any,
    in_deps: Sequence[int],
    masks: tuple[int, int],
    prefix: tuple[int, ...],
    found: list,
    added: dict[int, int],
) -> list[int]:
    """Propagates input dependencies through ``jaxpr``, recording scans over time and the
    values the probes are added to."""
    env: dict[Any, int] = dict(zip(jaxpr.invars, in_deps, strict=True))
    input_mask, probe_mask = masks

    def dep(v: Any) -> int:
        return 0 if isinstance(v, jcore.Literal) else env.get(v, 0)

    for i, eqn in enumerate(jaxpr.eqns):
        operand_deps = [dep(v) for v in eqn.invars]
        inner = _inner(eqn)
        if inner is not None:
            outs = _search(inner.jaxpr, operand_deps, masks, prefix + (i,), found, added)
        else:
            if eqn.primitive.name == "scan":
                scan = _scan(eqn, operand_deps, input_mask, prefix + (i,), len(found))
                if scan is not None:
                    found.append(scan)
            elif eqn.primitive.name == "add" and probe_mask:
                _record_probe(operand_deps, probe_mask, added)
            union = 0
            for d in operand_deps:
                union |= d
            outs = [union] * len(eqn.outvars)
        for v, d in zip(eqn.outvars, outs, strict=True):
            env[v] = d
    return [dep(v) for v in jaxpr.outvars]


def _record_probe(operand_deps: list[int], probe_mask: int, added: dict[int, int]) -> None:
    """An ``a + probe`` equation: what ``a`` depends on, for the probe's first addition."""
    for mine, other in ((0, 1), (1, 0)):
        d = operand_deps[mine]
        if d and d & probe_mask == d and d & (d - 1) == 0:  # exactly one probe input
            bit = d.bit_length() - 1
            if bit not in added and not operand_deps[other] & d:
                added[bit] = operand_deps[other]


def _scan(
    eqn: Any, operand_deps: list[int], input_mask: int, path: tuple[int, ...], index: int
) -> Scan | None:
    p = eqn.params
    nc, nk, length = p["num_consts"], p["num_carry"], int(p["length"])
    xs_deps = operand_deps[nc + nk :]
    if length < 2:
        return None
    # A scan over layers scans parameters (or probes, or state) and no input; a scan over
    # time scans inputs (and constants, e.g. zeros the model makes itself).
    axis = "layers" if any(d and not d & input_mask for d in xs_deps) else "time"
    if axis == "layers" and any(d & input_mask for d in xs_deps):
        return None  # scans inputs and parameters together: neither a stack nor a recurrence
    body = p["jaxpr"].jaxpr
    carry_out = body.outvars[:nk]
    ys_out = body.outvars[nk:]
    perturbed, hidden, shapes, seen = [], [], [], []
    for pos, v in enumerate(carry_out):
        if isinstance(v, jcore.Literal) or not _floating(v.aval) or any(v is s for s in seen):
            continue
        seen.append(v)
        perturbed.append(pos)
        hidden.append(any(v is w for w in ys_out))
        shapes.append(jax.ShapeDtypeStruct((length, *v.aval.shape), v.aval.dtype))
    if not perturbed:
        return None
    consts_from = xs_from = 0
    for d in operand_deps[:nc]:
        consts_from |= d
    for d in xs_deps:
        xs_from |= d
    stack = str(eqn.source_info.name_stack)
    return Scan(
        axis=axis,
        path=path,
        name=stack or f"scan_{index}",
        length=length,
        reverse=bool(p["reverse"]),
        perturbed=tuple(perturbed),
        hidden=tuple(hidden),
        shapes=tuple(shapes),
        consts_from=consts_from,
        xs_from=xs_from,
    )


def perturbed_call(
    closed: jcore.ClosedJaxpr,
    scans: Sequence[Scan],
    args: Sequence[Any],
    perturbations: Sequence[Sequence[Any]],
    observe: Callable[..., Any] | None = None,
) -> list[Any]:
    """Evaluates ``closed`` on ``args`` with ``perturbations[k][j][t]`` added to perturbed
    carry value ``j`` of ``scans[k]`` after step ``t`` (and to the step's output where it is
    the same value).

    With zero perturbations the result equals the program's; differentiate it with respect
    to the perturbations to get ``dL/dh_t`` for every step of every scan.

    Args:
      closed: the traced program the scans were found in.
      scans: the scans to perturb (from :func:`analyse` of ``closed``).
      args: the flat inputs.
      perturbations: for each scan, one ``(length, *carry_shape)`` array per perturbed value.
      observe: optional ``observe(scan, step, carries, xs)``, called for each scan with its
        step map ``step(carry, h, x_t) -> h'`` (the perturbed carry values ``h`` of one
        step, the rest of ``carry`` held), the carry before every step and the scanned
        inputs (each with a leading step axis); what it returns is collected.

    Returns:
      The program's flat outputs; with ``observe``, ``(outputs, observations)``.
    """
    targets = {s.path: (s, list(e), observe) for s, e in zip(scans, perturbations, strict=True)}
    if observe is not None:
        seen: list[Any] = []
        targets = {k: (*v, seen) for k, v in targets.items()}
        on_the_way = {s.path[:k] for s in scans for k in range(1, len(s.path))}
        outs = _evaluate(closed.jaxpr, closed.consts, args, targets, on_the_way, ())
        return outs, seen
    on_the_way = {s.path[:k] for s in scans for k in range(1, len(s.path))}
    return _evaluate(closed.jaxpr, closed.consts, args, targets, on_the_way, ())


def _evaluate(
    jaxpr: Any,
    consts: Sequence[Any],
    args: Sequence[Any],
    targets: dict,
    on_the_way: set,
    prefix: tuple[int, ...],
) -> list[Any]:
    env: dict[Any, Any] = {}

    def read(v: Any) -> Any:
        return v.val if isinstance(v, jcore.Literal) else env[v]

    env.update(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    for i, eqn in enumerate(jaxpr.eqns):
        path = prefix + (i,)
        values = [read(v) for v in eqn.invars]
        if path in targets:
            outs = _perturbed_scan(eqn, values, *targets[path])
        elif path in on_the_way:
            inner = _inner(eqn)
            outs = _evaluate(inner.jaxpr, inner.consts, values, targets, on_the_way, path)
        else:
            outs = _bind(eqn, values)
        for v, o in zip(eqn.outvars, outs, strict=True):
            if not isinstance(v, jcore.DropVar):
                env[v] = o
    return [read(v) for v in jaxpr.outvars]


def _bind(eqn: Any, values: list[Any]) -> list[Any]:
    """The equation applied to ``values`` as the program would (its context included)."""
    bind = eqn.primitive.get_bind_params(eqn.params)
    # Older JAX returns (subfunctions, params); newer JAX the params alone.
    subfuns, params = bind if isinstance(bind, tuple) else ((), bind)
    with eqn.ctx.manager:
        outs = eqn.primitive.bind(*subfuns, *values, **params)
    return outs if eqn.primitive.multiple_results else [outs]


def _perturbed_scan(
    eqn: Any,
    values: list[Any],
    scan: Scan,
    pert: list[Any],
    observe: Callable[..., Any] | None = None,
    seen: list | None = None,
) -> list[Any]:
    p = eqn.params
    nc, nk = p["num_consts"], p["num_carry"]
    consts, init, xs = values[:nc], values[nc : nc + nk], values[nc + nk :]
    body = p["jaxpr"]
    outvars = body.jaxpr.outvars
    step_fn = jcore.jaxpr_as_fun(body)
    # Every output position that is the same value as a perturbed carry value.
    positions = [[j for j, w in enumerate(outvars) if w is outvars[pos]] for pos in scan.perturbed]

    def step(carry, inputs):
        x_t, e_t = inputs
        outs = list(step_fn(*consts, *carry, *x_t))
        for where, e in zip(positions, e_t, strict=True):
            for j in where:
                outs[j] = outs[j] + e
        # With an observer, the carry before the step too (the trajectory it is linearised on).
        return outs[:nk], (outs[nk:], list(carry) if observe is not None else [])

    carry, (ys, before) = jax.lax.scan(
        step,
        list(init),
        (list(xs), pert),
        length=int(p["length"]),
        reverse=bool(p["reverse"]),
        unroll=p.get("unroll", 1),
    )
    if observe is not None:

        def one_step(carry_t, h, x_t):
            full = list(carry_t)
            for pos, value in zip(scan.perturbed, h, strict=True):
                full[pos] = value
            outs = step_fn(*consts, *full, *x_t)
            return [outs[pos] for pos in scan.perturbed]

        seen.append(observe(scan, one_step, before, list(xs)))
    return [*carry, *ys]


# Equations that multiply by a kernel when one operand is a parameter alone.
_KERNEL_OPS = ("dot_general", "conv_general_dilated")


def kernel_depths(
    closed: jcore.ClosedJaxpr, source: int, target: int, param_mask: int
) -> tuple[int, int] | None:
    """The fewest and the most kernel multiplications on a path from one probe to the value
    another probe is added to.

    A block whose output adds its input through a shorter path than its branch (an identity
    skip: 0 kernels; a projection shortcut: 1 kernel against the branch's 2 or 3) has
    ``fewest < most``; a plain block (every path through all its layers) has them equal.

    Args:
      closed: the traced forward pass.
      source: bit mask of the first probe's flat inputs.
      target: bit mask of the second probe's flat inputs.
      param_mask: bit mask of the parameters' flat inputs.

    Returns:
      ``(fewest, most)``, or ``None`` when the second probe's value does not depend on the
      first probe (or is not found).
    """
    deps = [1 << i for i in range(len(closed.jaxpr.invars))]
    depth = [(0, 0) if d & source else None for d in deps]
    found: list[tuple[int, int] | None] = [None]
    _depths(closed.jaxpr, deps, depth, (source, target, param_mask), found)
    return found[0]


def _depths(jaxpr: Any, in_deps: list[int], in_depth: list, masks: tuple, found: list) -> tuple:
    source, target, param_mask = masks
    env = dict(zip(jaxpr.invars, zip(in_deps, in_depth, strict=True), strict=True))

    def read(v: Any) -> tuple[int, Any]:
        return (0, None) if isinstance(v, jcore.Literal) else env.get(v, (0, None))

    for eqn in jaxpr.eqns:
        operands = [read(v) for v in eqn.invars]
        inner = _inner(eqn)
        if inner is not None:
            deps, depths = zip(*operands, strict=True) if operands else ((), ())
            outs = _depths(inner.jaxpr, list(deps), list(depths), masks, found)
            for v, o in zip(eqn.outvars, zip(*outs, strict=True), strict=True):
                env[v] = o
            continue
        if eqn.primitive.name == "add" and found[0] is None:
            for (d_mine, _), (_, depth_other) in (
                (operands[0], operands[1]),
                (operands[1], operands[0]),
            ):
                if d_mine and d_mine & target == d_mine:
                    found[0] = depth_other
        union = 0
        for d, _ in operands:
            union |= d
        reached = [dp for _, dp in operands if dp is not None]
        depth = None
        if reached:
            has_kernel = any(_param_only(d, param_mask) for d, _ in operands)
            # A product with a kernel (not of two activations, as attention scores are), or
            # a loop that reads parameters, counts as one layer.
            step = int(has_kernel and eqn.primitive.name in (*_KERNEL_OPS, "scan"))
            depth = (min(r[0] for r in reached) + step, max(r[1] for r in reached) + step)
        for v in eqn.outvars:
            env[v] = (union, depth)
    return [read(v)[0] for v in jaxpr.outvars], [read(v)[1] for v in jaxpr.outvars]


def _param_only(deps: int, param_mask: int) -> bool:
    return bool(deps) and deps & param_mask == deps
