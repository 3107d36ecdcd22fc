"""Lyapunov spectra of the chain-rule product, and sigma_max / sigma_min of it vs depth.

The QR algorithm (gradjax.lyapunov_spectrum) carries an orthonormal frame through the layers,
so it measures growth rates at any depth in float32; the naive product formed explicitly and
handed to an SVD loses every singular value below ``eps * sigma_max`` within a few layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

NAME = "lyapunov"
TITLE = "Lyapunov spectra of the input-output Jacobian; sigma_max and sigma_min vs depth"
CLAIMS: tuple[str, ...] = ()
METHODS = (
    "Full Lyapunov spectra of J = J_L ... J_1 by repeated QR re-orthonormalisation in a "
    "lax.scan over layers (gradjax.lyapunov_spectrum, float32, Jacobian-vector products of "
    "each block), for linear nets (Gaussian and orthogonal weights, sigma_w = 1), ReLU at He "
    "init (Gaussian) and critical tanh at q* = 1/64 (Gaussian and orthogonal; "
    "gradjax.isometry.critical_point). The linear Gaussian spectrum is compared with its closed "
    "form "
    "(gradjax.lyapunov.gaussian_product_exponents: lambda_i = (psi((N-i+1)/2) + log(2/N))/2). The "
    "running "
    "log-growth of the first and last frame directions (cumulative sums of log|R_ii|) tracks "
    "log sigma_max and log sigma_min of the product at every depth; the explicit float32 "
    "product with an SVD (gradjax.isometry.jacobian_spectra) is shown for comparison."
)

# (activation, weight ensemble, q*) with sigma_w, sigma_b on the critical line.
CASES = (
    ("linear", "gaussian", 1.0),
    ("linear", "orthogonal", 1.0),
    ("relu", "gaussian", 1.0),
    ("tanh", "gaussian", 1 / 64),
    ("tanh", "orthogonal", 1 / 64),
)


def _label(act: str, ens: str) -> str:
    return f"{'ReLU (He)' if act == 'relu' else act}, {ens}"


def _num(x) -> float | str:
    """A JSON-safe number: finite floats as floats, the rest as "inf"/"-inf"/"nan"."""
    x = float(x)
    return x if math.isfinite(x) else str(x)


def config(quick: bool) -> dict:
    """Quick: narrower, shallower, fewer seeds; the same code path."""
    if quick:
        return {"width": 32, "depth": 100, "seeds": 2, "naive_depths": [1, 2, 5, 10, 25, 50]}
    return {"width": 96, "depth": 300, "seeds": 4, "naive_depths": [1, 2, 5, 10, 25, 50, 100]}


def compute(cfg: dict, progress: Callable[[str], None]) -> dict:
    """QR Lyapunov spectra for every case; the naive product's extreme singular values."""
    import jax

    import gradjax as gj

    width, depth, seeds = cfg["width"], cfg["depth"], cfg["seeds"]
    keys = jax.random.split(jax.random.key(10), seeds)
    init_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
    input_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    bases = {}
    numbers: dict = {"width": width, "depth": depth}
    arrays: dict = {}
    for act, ens, q in CASES:
        progress(f"{act} {ens}")
        if ens not in bases:  # one base draw per seed and ensemble (common random numbers)
            proto = gj.build(gj.NetConfig(depth=depth, width=width, init=ens))
            bases[ens] = jax.jit(jax.vmap(proto.init_base))(init_keys)
        net, cp = gj.isometry.critical_net(act, q_star=q, depth=depth, width=width, init=ens)
        sw2, sb2 = float(cp.sigma_w2), float(cp.sigma_b2)

        def one(b, key, net=net, q=q, sw2=sw2, sb2=sb2):
            x = gj.isometry.isometry_input(key, width, q_star=q, sigma_w2=sw2, sigma_b2=sb2)
            spec = gj.lyapunov_spectrum(net, net.scale(b), x)
            running = jax.numpy.cumsum(spec.layer_log_r[:, jax.numpy.array([0, -1])], axis=0)
            return spec.exponents, running

        exps, running = jax.jit(jax.vmap(one))(bases[ens], input_keys)
        tag = f"{act}_{ens}"
        arrays[f"exponents_{tag}"] = np.asarray(exps, np.float64)
        arrays[f"running_{tag}"] = np.asarray(running, np.float64)
        numbers[f"{tag}_lambda_max"] = _num(np.median(exps[:, 0]))
        numbers[f"{tag}_lambda_min"] = _num(np.median(exps[:, -1]))
        numbers[f"{tag}_all_finite"] = bool(np.all(np.isfinite(np.asarray(exps[:, : width // 2]))))

    theory = np.asarray(gj.lyapunov.gaussian_product_exponents(width).mean, np.float64)
    arrays["theory_linear_gaussian"] = theory
    err = np.abs(arrays["exponents_linear_gaussian"].mean(0) - theory)
    numbers["linear_gaussian_max_abs_err_vs_closed_form"] = float(err.max())
    # The QR estimate is unbiased here; its standard error is sqrt(psi'((N-i+1)/2)/(4 L S)).
    var = np.asarray(gj.lyapunov.gaussian_product_exponents(width).var_per_layer, np.float64)
    numbers["linear_gaussian_max_abs_z"] = float(np.max(err / np.sqrt(var / (depth * seeds))))
    numbers["linear_orthogonal_max_abs_err"] = float(
        np.max(np.abs(arrays["exponents_linear_orthogonal"]))
    )

    progress("naive product + SVD")
    naive_depths = tuple(d for d in cfg["naive_depths"] if d <= depth)
    net = gj.build(gj.NetConfig(depth=depth, width=width, activation="linear"))

    def naive(b, key):
        x = jax.random.normal(key, (width,))
        return gj.isometry.jacobian_spectra(net, net.scale(b), x, depths=naive_depths).eigenvalues

    lam = np.asarray(jax.jit(jax.vmap(naive))(bases["gaussian"], input_keys), np.float64)
    with np.errstate(divide="ignore"):
        arrays["naive_log_sigma"] = 0.5 * np.log(lam[..., [0, -1]])  # (seed, depth, 2)
    arrays["naive_depths"] = np.array(naive_depths)
    log_sigma = np.median(arrays["naive_log_sigma"], axis=0)
    qr_min = np.median(arrays["running_linear_gaussian"][:, np.array(naive_depths) - 1, 1], 0)
    numbers["naive_depths"] = list(naive_depths)
    numbers["naive_log10_sigma_min"] = [_num(v / math.log(10)) for v in log_sigma[:, 1]]
    numbers["qr_log10_sigma_min"] = [_num(v / math.log(10)) for v in qr_min]
    # Below ~100 eps of sigma_max an explicit float32 product cannot resolve sigma_min.
    floor = math.log(100 * float(np.finfo(np.float32).eps))
    hit = [
        d
        for d, r in zip(naive_depths, log_sigma[:, 1] - log_sigma[:, 0], strict=True)
        if not r > floor
    ]
    numbers["naive_sigma_min_at_float32_floor_from_depth"] = hit[0] if hit else "none"
    return {"numbers": numbers, "arrays": arrays}


def plot(cfg: dict, result: dict):
    """Lyapunov spectra (left) and running log10 sigma_max / sigma_min (right)."""
    from gradjax.utils.plotting import PALETTE, band, new_figure, styled

    @styled
    def draw():
        numbers, arrays = result["numbers"], result["arrays"]
        width, depth = numbers["width"], numbers["depth"]
        fig, axes = new_figure(1, 2, width=7.2, height=3.2)
        ax = axes[0]
        idx = (np.arange(width) + 0.5) / width
        for c, (act, ens, _) in enumerate(CASES):
            ex = arrays[f"exponents_{act}_{ens}"]
            style = "--" if act == "linear" else "-"  # linear and tanh (q* small) overlap
            band(
                ax,
                idx,
                np.maximum(ex, -6.0),
                color=PALETTE[c],
                label=_label(act, ens),
                linestyle=style,
            )
        ax.plot(idx, arrays["theory_linear_gaussian"], "k:", lw=1.2, label="closed form")
        ax.set(
            xlabel="exponent index $i/N$",
            ylabel=r"Lyapunov exponent $\lambda_i$ (per layer)",
            title=f"QR spectrum, depth {depth}, width {width}",
            ylim=(-6.2, 0.5),
        )
        ax.legend(loc="lower left", fontsize=6.5)
        ax = axes[1]
        layers = np.arange(1, depth + 1)
        log10 = 1.0 / math.log(10.0)
        run = arrays["running_linear_gaussian"] * log10
        band(ax, layers, run[..., 0], color=PALETTE[0], label=r"QR: $\sigma_{max}$")
        band(ax, layers, run[..., 1], color=PALETTE[3], label=r"QR: $\sigma_{min}$")
        th = arrays["theory_linear_gaussian"] * log10
        ax.plot(layers, layers * th[0], "k:", lw=1.0, label=r"$L\lambda_1$, $L\lambda_N$")
        ax.plot(layers, layers * th[-1], "k:", lw=1.0)
        nd = arrays["naive_depths"]
        naive = arrays["naive_log_sigma"] * log10
        for k, (marker, color, sigma) in enumerate(
            (("o", PALETTE[0], r"\sigma_{max}"), ("s", PALETTE[3], r"\sigma_{min}"))
        ):
            ax.plot(
                nd,
                np.median(naive[..., k], 0),
                marker,
                color=color,
                mfc="none",
                label=f"float32 product + SVD: ${sigma}$",
            )
        ax.set(
            xscale="log",
            xlabel="depth $L$",
            ylabel=r"$\log_{10}\sigma$ of $J_L\cdots J_1$",
            title="linear Gaussian net: extreme singular values",
        )
        ax.legend(loc="lower left", fontsize=6.5)
        fig.suptitle(
            f"Lyapunov exponents by QR in float32 ({arrays['exponents_linear_gaussian'].shape[0]} "
            "seeds, median and IQR); exponents below -6 drawn at -6",
            fontsize=9,
        )
        return fig

    return draw()


def verdicts(cfg: dict, numbers: dict) -> list[dict]:
    """This figure decides no claim of its own (CLAIMS is empty)."""
    return []
