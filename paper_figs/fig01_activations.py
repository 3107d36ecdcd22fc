"""Figure 1: the article's three activations and their derivatives, maxima marked (C3)."""

from __future__ import annotations

import numpy as np

NAME = "activations"
TITLE = "Activations and their derivatives: sigmoid' <= 1/4, tanh' <= 1, relu' in {0, 1}"
CLAIMS = ("C3",)
METHODS = """Each activation from gradjax's table and its derivative by forward-mode autodiff
(gradjax.activations.derivative) on a fine grid; maxima located on the grid and refined analytically
(they sit at 0). The article's tanh formula (e^x - e^-x)/(e^x - e^-x) is evaluated as written:
it is identically 1, so its denominator must read e^x + e^-x. Mean squared derivatives under a
standard normal input, E[phi'(z)^2], are the per-layer gradient factor chi_1 / sigma_w^2 at
unit pre-activation variance (computed with gradjax.theory's Gauss-Hermite quadrature)."""


def config(quick: bool) -> dict:
    return {
        "x_min": -6.0,
        "x_max": 6.0,
        "points": 2401 if quick else 12001,
        "activations": ["sigmoid", "tanh", "relu", "leaky_relu", "elu"],
    }


def compute(cfg: dict, progress) -> dict:
    import jax.numpy as jnp

    import gradjax as gj
    from gradjax.meanfield import theory

    x = np.linspace(cfg["x_min"], cfg["x_max"], cfg["points"])
    arrays = {"x": x}
    numbers = {}
    for name in cfg["activations"]:
        arrays[f"{name}.value"] = np.asarray(gj.get_activation(name)(jnp.asarray(x)))
        d = np.asarray(gj.activations.derivative(name)(jnp.asarray(x)))
        arrays[f"{name}.derivative"] = d
        numbers[f"{name}_prime_max"] = float(d.max())
        numbers[f"{name}_prime_argmax"] = float(x[int(d.argmax())])
        # E[phi'(z)^2], z ~ N(0, 1): the chain-rule factor per unit sigma_w^2 at q = 1.
        numbers[f"{name}_mean_sq_derivative_std_normal"] = float(
            theory.gaussian_expectation(lambda z, n=name: gj.activations.derivative(n)(z) ** 2, 1.0)
        )
    # The article's tanh formula as printed: the same expression over itself.
    num = np.exp(x) - np.exp(-x)
    nonzero = num != 0
    typo = num[nonzero] / num[nonzero]
    numbers["article_tanh_formula_max_abs_error"] = float(
        np.max(np.abs(typo - np.tanh(x[nonzero])))
    )
    numbers["corrected_tanh_formula_max_abs_error"] = float(
        np.max(np.abs(num / (np.exp(x) + np.exp(-x)) - arrays["tanh.value"]))
    )
    z = np.random.default_rng(0).standard_normal(200_000)
    numbers["relu_zero_derivative_fraction_std_normal"] = float(
        np.mean(np.asarray(gj.activations.derivative("relu")(jnp.asarray(z))) == 0)
    )
    return {"numbers": numbers, "arrays": arrays}


def plot(cfg: dict, result: dict):
    from gradjax.utils.plotting import PALETTE, new_figure, styled

    @styled
    def draw():
        a, n = result["arrays"], result["numbers"]
        x = a["x"]
        fig, axes = new_figure(1, 3, width=7.2, height=2.5)
        panels = [("sigmoid", ()), ("tanh", ()), ("relu", ("leaky_relu", "elu"))]
        for ax, (name, extras) in zip(axes, panels, strict=True):
            ax.plot(x, a[f"{name}.value"], color=PALETTE[0], label=rf"{name} $\phi(x)$")
            ax.plot(x, a[f"{name}.derivative"], color=PALETTE[1], label=r"$\phi'(x)$")
            for k, extra in enumerate(extras):
                ax.plot(
                    x,
                    a[f"{extra}.derivative"],
                    color=PALETTE[2 + k],
                    linestyle="--",
                    linewidth=1.0,
                    label=f"{extra}'",
                )
            m, xm = n[f"{name}_prime_max"], n[f"{name}_prime_argmax"]
            ax.plot([xm], [m], "o", color=PALETTE[3], markersize=4)
            ax.annotate(
                f"max $\\phi'$ = {m:.4g}",
                (xm, m),
                textcoords="offset points",
                xytext=(6, 6),
                fontsize=7.5,
            )
            ax.axhline(1.0, color="0.5", linewidth=0.7, linestyle=":")
            lo, hi = ax.get_ylim()
            ax.set_ylim(lo, max(hi, 1.3 * m))  # room for the label under the title
            ax.set(xlabel="pre-activation $x$", title=name)
            ax.legend(loc="upper left", fontsize=7)
        axes[0].set_ylabel("value")
        axes[2].set_ylim(-1.2, 3.0)
        return fig

    return draw()


def verdicts(cfg: dict, numbers: dict) -> list[dict]:
    ok = (
        abs(numbers["sigmoid_prime_max"] - 0.25) < 1e-6
        and abs(numbers["tanh_prime_max"] - 1.0) < 1e-6
    )
    typo = numbers["article_tanh_formula_max_abs_error"] > 0.1
    return [
        {
            "claim": "C3",
            "verdict": "confirmed" if ok else "contradicted",
            "summary": (
                f"max sigmoid' = {numbers['sigmoid_prime_max']:.6f} and max tanh' = "
                f"{numbers['tanh_prime_max']:.6f}, both at x = 0"
                + (
                    "; the article's tanh formula is identically 1 (max error "
                    f"{numbers['article_tanh_formula_max_abs_error']:.3f} vs tanh), corrected "
                    "with denominator e^x + e^-x"
                    if typo
                    else ""
                )
                + f". Under N(0,1) inputs E[sigmoid'^2] = "
                f"{numbers['sigmoid_mean_sq_derivative_std_normal']:.4f} vs E[tanh'^2] = "
                f"{numbers['tanh_mean_sq_derivative_std_normal']:.3f}."
            ),
            "numbers": [
                "sigmoid_prime_max",
                "tanh_prime_max",
                "article_tanh_formula_max_abs_error",
                "sigmoid_mean_sq_derivative_std_normal",
                "tanh_mean_sq_derivative_std_normal",
            ],
        }
    ]
