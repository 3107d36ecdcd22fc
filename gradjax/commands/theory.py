"""``gradjax theory``: mean-field predictions (q*, chi_1, c*, depth scales, critical sigma_w^2)."""

from __future__ import annotations

import argparse
import json
import math
import sys

from gradjax.commands.common import nonnegative_real


def add_parser(sub) -> None:
    p = sub.add_parser(
        "theory",
        help="mean-field q*, chi_1, c*, depth scales and the critical sigma_w^2",
        description="Mean-field theory (Poole et al. 2016, Schoenholz et al. 2017) of a deep "
        "network with W_ij ~ N(0, sigma_w^2/N), b ~ N(0, sigma_b^2): the fixed point q* of the "
        "length map, chi_1, the correlation fixed point c*, the depth scales xi_q, xi_c, "
        "xi_grad = -1/ln chi_1, and the critical sigma_w^2 (chi_1 = 1) at this sigma_b^2. "
        "Infinite values print as 'inf' (a q* that diverges too, with q_status 'diverges'); "
        "where chi_1 jumps over 1 (q* starts to diverge) there is no critical point and the "
        "jump is reported.",
    )
    p.add_argument("--activation", default="tanh", help="activation name (default tanh)")
    p.add_argument(
        "--sigma-b2", type=nonnegative_real, default=0.05, help="bias variance (default 0.05)"
    )
    p.add_argument(
        "--sigma-w2",
        type=nonnegative_real,
        default=None,
        help="weight variance (default: the critical one, chi_1 = 1)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--x64", action="store_true", help="compute in float64")
    p.set_defaults(run=run)


def _number(value: float) -> float | str:
    # JSON has no infinity; the strings "inf"/"-inf"/"nan" are unambiguous and valid JSON.
    if math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def run(args: argparse.Namespace) -> int:
    from gradjax.utils.errors import GradjaxInputError, check_real

    check_real("--sigma-b2", args.sigma_b2, minimum=0.0)
    if args.sigma_w2 is not None:
        check_real("--sigma-w2", args.sigma_w2, minimum=0.0)

    import jax

    if args.x64:
        jax.config.update("jax_enable_x64", True)
    from gradjax.meanfield import theory

    line = theory.critical_line(args.activation, [args.sigma_b2])
    lo, hi = theory.SIGMA_W2_RANGE
    critical: float | None = float(line.sigma_w2[0]) if bool(line.found[0]) else None
    critical_note = None
    if critical is None:
        reason = theory.no_crossing_reason(line, lo, hi)
        if args.sigma_w2 is None:
            raise GradjaxInputError(
                f"--activation={args.activation!r} has no critical sigma_w2 in [{lo:g}, {hi:g}] "
                f"at --sigma-b2={args.sigma_b2:g}: {reason}; give --sigma-w2 to evaluate a point"
            )
        critical_note = f"no critical sigma_w2 in [{lo:g}, {hi:g}]: {reason}"
    sigma_w2 = critical if args.sigma_w2 is None else args.sigma_w2
    mf = theory.mean_field(args.activation, sigma_w2, args.sigma_b2)
    get = lambda name: float(getattr(mf, name))
    status = theory.status_name(mf.q_status)
    values = {
        "activation": args.activation,
        "sigma_w2": float(sigma_w2),
        "sigma_b2": float(args.sigma_b2),
        "q_star": _number(get("q_star")),
        "q_status": status,
        "chi1": _number(get("chi1")),
        "c_star": _number(get("c_star")),
        "xi_q": _number(get("xi_q")),
        "xi_c": _number(get("xi_c")),
        "xi_grad": _number(get("xi_grad")),
        "critical_sigma_w2": "none" if critical is None else critical,
        "q_converged": bool(mf.q_converged),
        "q_iterations": int(mf.q_iterations),
        "c_converged": bool(mf.c_converged),
        "c_iterations": int(mf.c_iterations),
        "dtype": "float64" if args.x64 else "float32",
    }
    notes = []
    if status == "diverges":
        notes.append(
            "q* diverges: from q0 = 1 the length map grows without bound (no finite fixed "
            "point; q_star is inf); chi1 and the depth scales are their q -> inf limits"
        )
    elif status == "unstable":
        notes.append(
            f"q* = {get('q_star'):.6g} is an unstable fixed point (the length map's slope there "
            "exceeds 1): the iteration from q0 = 1 started on it to rounding accuracy, so "
            "float32 and --x64 may disagree (one stays, the other leaves it)"
        )
    elif status == "no_convergence":
        notes.append(
            f"q* did NOT converge: the length map stopped after {values['q_iterations']} "
            f"iterations at q = {get('q_star'):.6g} (residual {float(mf.q_residual):.3g}); "
            "q* and everything derived from it are where the iteration stopped"
        )
    if not values["c_converged"]:
        reason = (
            "q* = 0: signals vanish, correlations are undefined"
            if get("q_star") <= 0
            else (f"stopped after {values['c_iterations']} iterations at c = {get('c_star'):.6g}")
        )
        notes.append(f"c* did NOT converge ({reason})")
    if critical_note:
        notes.append(critical_note)
    values["notes"] = notes
    if args.json:
        print(json.dumps(values, indent=2))
    else:
        width = max(len(k) for k in values)
        for key, value in values.items():
            if key == "notes":
                continue
            text = f"{value:.6g}" if isinstance(value, float) else str(value)
            print(f"{key:<{width}}  {text}")
    for note in notes:
        print(f"gradjax theory: warning: {note}", file=sys.stderr)
    return 0
