"""Pre-LN vs post-LN Transformer stacks (Flax NNX): diagnose at init, then train.

Post-LN (``x <- LN(x + f(x))``, the original Transformer) puts a LayerNorm on the residual
path, so the gradient reaching the lower blocks is renormalised at every block while the
output blocks get the full gradient: at init the gradient is concentrated near the output
(Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture"), and Adam
without a learning-rate warm-up takes large, badly scaled first steps. Pre-LN
(``x <- x + f(LN(x))``) keeps an identity path from the loss to every block.

The task: each 8x8 digit is a sequence of 8 row tokens; classify it. The example diagnoses
both stacks at init (block outputs exposed with ``self.perturb``), then trains post-LN
without and with warm-up, and pre-LN without, on the same seeds and data order.

Run:  python examples/prenorm_vs_postnorm_transformer.py [--steps 300] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import gradjax as gj
from gradjax.training.data import digits

DEPTH = 12
DIM = 32
HEADS = 4


class Block(nnx.Module):
    """Self-attention + MLP with LayerNorm before (pre-LN) or after (post-LN) each residual."""

    def __init__(self, *, post_norm: bool, rngs: nnx.Rngs):
        self.post_norm = post_norm
        self.attn = nnx.MultiHeadAttention(
            num_heads=HEADS, in_features=DIM, decode=False, rngs=rngs
        )
        self.ln1 = nnx.LayerNorm(DIM, rngs=rngs)
        self.ln2 = nnx.LayerNorm(DIM, rngs=rngs)
        self.fc1 = nnx.Linear(DIM, 4 * DIM, rngs=rngs)
        self.fc2 = nnx.Linear(4 * DIM, DIM, rngs=rngs)

    def mlp(self, x):
        return self.fc2(nnx.gelu(self.fc1(x)))

    def __call__(self, x):
        if self.post_norm:
            x = self.ln1(x + self.attn(x))
            x = self.ln2(x + self.mlp(x))
        else:
            h = self.ln1(x)
            x = x + self.attn(h)
            x = x + self.mlp(self.ln2(x))
        return self.perturb("out", x)  # exposes dL/d(block output) to gj.diagnose


class Transformer(nnx.Module):
    """Row tokens -> embedding + positions -> ``DEPTH`` blocks -> mean pool -> 10 logits."""

    def __init__(self, *, post_norm: bool, rngs: nnx.Rngs):
        self.embed = nnx.Linear(8, DIM, rngs=rngs)
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (8, DIM)))
        self.blocks = nnx.List([Block(post_norm=post_norm, rngs=rngs) for _ in range(DEPTH)])
        self.final_ln = None if post_norm else nnx.LayerNorm(DIM, rngs=rngs)
        self.head = nnx.Linear(DIM, 10, rngs=rngs)

    def __call__(self, x):
        x = self.embed(x.reshape(x.shape[0], 8, 8)) + self.pos[...]
        for block in self.blocks:
            x = block(x)
        if self.final_ln is not None:
            x = self.final_ln(x)
        return self.head(jnp.mean(x, axis=1))


def loss_fn(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def make_problem(*, variant: str = "post", batch: int = 128, seed: int = 0) -> dict:
    """The NNX model, one batch and the loss, ready for ``gj.diagnose(model, None, ...)``.

    Args:
      variant: ``"post"`` (post-LN) or ``"pre"`` (pre-LN).
      batch: examples in the diagnosed batch.
      seed: PRNG seed of the init.

    Returns:
      ``{"apply_fn", "params", "batch", "loss_fn", "options", "data"}``.
    """
    data = digits()
    model = Transformer(post_norm=variant == "post", rngs=nnx.Rngs(seed))
    batch_xy = (data.x_train[:batch], data.y_train[:batch])
    options = {"lr": 3e-3}  # norms and residual blocks are found by inspection
    return {
        "apply_fn": model,
        "params": None,
        "batch": batch_xy,
        "loss_fn": loss_fn,
        "options": options,
        "data": data,
    }


def train(problem: dict, *, steps: int, lr: float, warmup: int, batch: int = 128, seed: int = 0):
    """Adam (optionally with linear warm-up), one jitted ``lax.scan``, norms monitored.

    Returns:
      ``(history, losses, test_accuracy)``.
    """
    data, model = problem["data"], problem["apply_fn"]
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    schedule = optax.linear_schedule(0.0, lr, warmup) if warmup else optax.constant_schedule(lr)
    tx = gj.monitor(optax.adam(schedule))
    idx = jax.random.randint(jax.random.key(seed + 1), (steps, batch), 0, data.x_train.shape[0])
    call = nnx.capture(lambda m, x: m(x), nnx.Perturbation)

    def logits_of(p, x):
        return call(nnx.merge(graphdef, p, rest), x)[0]

    def step(carry, batch_idx):
        p, s = carry
        value, g = jax.value_and_grad(
            lambda q: loss_fn(logits_of(q, data.x_train[batch_idx]), data.y_train[batch_idx])
        )(p)
        updates, s = tx.update(g, s, p)
        return (optax.apply_updates(p, updates), s), (value, gj.latest_norms(s))

    run = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), idx))
    (params, _), (losses, norms) = run(params)
    history = gj.NormHistory.from_stacked(norms)
    accuracy = float(jnp.mean(jnp.argmax(logits_of(params, data.x_test), -1) == data.y_test))
    return history, np.asarray(losses), accuracy


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=40)
    parser.add_argument("--out", default=None, help="directory for PNG/JSON (optional)")
    args = parser.parse_args(argv)
    results = {}
    for variant in ("post", "pre"):
        problem = make_problem(variant=variant)
        t0 = time.perf_counter()
        # lr: probe the first Adam step at the planned learning rate (and halvings of it).
        report = gj.diagnose(
            problem["apply_fn"],
            problem["params"],
            problem["batch"],
            problem["loss_fn"],
            **{**problem["options"], "lr": args.lr},
        )
        print(f"\n=== {variant}-LN at init (diagnose: {time.perf_counter() - t0:.2f} s) ===")
        print(report.summary())
        results[f"{variant}_init"] = {
            "verdict": report.verdict,
            "growth_per_layer": report.growth_per_layer,
            "first_step_unstable": report.step_probe.unstable,
            "safe_lr": report.step_probe.safe_lr,
            "suggestions": list(report.suggestions),
        }
        if args.out:
            from pathlib import Path

            from gradjax.utils.plotting import save_figure

            save_figure(
                report.plot(title=f"{variant}-LN Transformer at init: {report.verdict}"),
                Path(args.out) / f"transformer_{variant}_report",
            )
    runs = {
        "post, no warm-up": ("post", 0),
        f"post, warm-up {args.warmup}": ("post", args.warmup),
        "pre, no warm-up": ("pre", 0),
    }
    for label, (variant, warmup) in runs.items():
        problem = make_problem(variant=variant)
        history, losses, accuracy = train(problem, steps=args.steps, lr=args.lr, warmup=warmup)
        early = float(np.mean(losses[: args.steps // 5]))
        print(
            f"{label:<22} loss first 20%: {early:.3f}  last 10%: "
            f"{np.mean(losses[-args.steps // 10 :]):.3f}  test accuracy {accuracy:.3f}  "
            f"p90 grad norm {history.clip_threshold():.3g}"
        )
        results[label] = {
            "accuracy": accuracy,
            "early_loss": early,
            "final_loss": float(np.mean(losses[-args.steps // 10 :])),
        }
        if args.out:
            from pathlib import Path

            from gradjax.utils.plotting import save_figure

            save_figure(
                history.plot(title=f"{label}: per-module gradient norms"),
                Path(args.out) / f"transformer_{label.replace(' ', '_').replace(',', '')}",
            )
    if args.out:
        from pathlib import Path

        (Path(args.out) / "transformer_results.json").write_text(json.dumps(results, indent=2))
    print("\nsummary:", json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
