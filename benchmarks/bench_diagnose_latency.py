"""Latency of :func:`gradjax.diagnose` on a user's Transformer and LSTM, cold and warm.

Two cases, each a Flax Linen model as a user writes it (no ``perturb`` calls):

* ``transformer``: a pre-LN Transformer encoder (``blocks`` blocks of self-attention and a
  GELU MLP, width ``width``) on a batch of ``batch`` sequences;
* ``lstm``: two stacked ``nn.RNN(nn.OptimizedLSTMCell)`` layers over ``lstm_steps`` steps
  (width ``lstm_width``) with dropout between them, called with ``apply_kwargs``
  (``train=True``) and a dropout RNG: its time axis is measured step by step.

Timed in one run, per case:

* ``grad_compile``: what a competent user pays for one gradient of the same loss: a fresh
  ``jax.jit(jax.grad(loss))`` compiled and run once;
* ``cold``: the first ``gj.diagnose`` call on the model (gradjax's caches cleared first);
* ``warm``: a second call on the same model and shapes (the compiled program is reused).

Ratios: ``cold_over_grad_compile`` (target <= 2.0) and ``warm_over_cold`` (<= 0.1), the
LSTM's prefixed ``lstm_``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

import gradjax as gj
from gradjax.benchmarks import harness

NAME = "diagnose_latency"


class Block(nn.Module):
    """Pre-LN block: ``x + attn(LN(x))`` then ``x + MLP(LN(x))``."""

    width: int
    heads: int = 4

    @nn.compact
    def __call__(self, x):
        h = nn.LayerNorm()(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads)(h, h)
        h = nn.Dense(4 * self.width)(nn.LayerNorm()(x))
        return x + nn.Dense(self.width)(nn.gelu(h))


class Transformer(nn.Module):
    """Token embedding, ``blocks`` pre-LN blocks, final LayerNorm, mean-pooled linear head."""

    blocks: int = 12
    width: int = 64

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(self.width)(x)
        for _ in range(self.blocks):
            h = Block(self.width)(h)
        return nn.Dense(1)(jnp.mean(nn.LayerNorm()(h), axis=1))


class StackedLSTM(nn.Module):
    """Two LSTM layers over time, dropout between them, a linear head on the last step."""

    width: int = 128

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.RNN(nn.OptimizedLSTMCell(self.width))(x)
        h = nn.Dropout(0.1, deterministic=not train)(h)
        h = nn.RNN(nn.OptimizedLSTMCell(self.width))(h)
        return nn.Dense(1)(h[:, -1])


def _config(quick: bool) -> dict:
    if quick:
        return {
            "blocks": 3, "width": 16, "batch": 8, "seq": 8, "features": 8, "repeats": 1,
            "lstm_steps": 16, "lstm_width": 16,
        }  # fmt: skip
    return {
        "blocks": 12, "width": 64, "batch": 16, "seq": 16, "features": 16, "repeats": 3,
        "lstm_steps": 128, "lstm_width": 128,
    }  # fmt: skip


def _lstm_problem(cfg: dict):
    k_init, k_x, k_y = jax.random.split(jax.random.key(1), 3)
    model = StackedLSTM(width=cfg["lstm_width"])
    x = jax.random.normal(k_x, (cfg["batch"], cfg["lstm_steps"], cfg["features"]))
    y = jax.random.normal(k_y, (cfg["batch"], 1))
    return model, model.init(k_init, x), x, y


def _problem(cfg: dict):
    k_init, k_x, k_y = jax.random.split(jax.random.key(0), 3)
    model = Transformer(blocks=cfg["blocks"], width=cfg["width"])
    x = jax.random.normal(k_x, (cfg["batch"], cfg["seq"], cfg["features"]))
    y = jax.random.normal(k_y, (cfg["batch"], 1))
    return model, model.init(k_init, x), x, y


def _clear_gradjax_caches() -> None:
    from gradjax.diagnosis.measurement import clear_caches

    clear_caches()


def _case(model, variables, x, y, repeats: int, **options) -> tuple[dict, dict, object, float]:
    """Timings of one case: ``jax.grad`` compile + run, cold and warm ``gj.diagnose``."""
    apply_kwargs = options.get("apply_kwargs", {})
    rngs = options.get("rngs")

    def loss(params):
        out = model.apply({"params": params}, x, rngs=rngs, **apply_kwargs)
        return gj.mse_loss(out, y)

    def grad_compile():
        # A fresh jit each time: compile and run, as a user's first gradient.
        return jax.jit(jax.grad(loss))(variables["params"])

    def cold():
        _clear_gradjax_caches()
        return gj.diagnose(model, variables, (x, y), "mse", **options).loss

    def warm():
        return gj.diagnose(model, variables, (x, y), "mse", **options).loss

    timings = {
        "grad_compile": harness.time_fn(grad_compile, repeats=repeats, warmup=0),
        "cold": harness.time_fn(cold, repeats=repeats, warmup=0),
        "warm": harness.time_fn(warm, repeats=max(3, repeats), warmup=1),
    }
    ratios = {
        "cold_over_grad_compile": timings["cold"]["median"] / timings["grad_compile"]["median"],
        "warm_over_cold": timings["warm"]["median"] / timings["cold"]["median"],
    }
    report = gj.diagnose(model, variables, (x, y), "mse", **options)
    # Accuracy: the diagnosed loss against the plain forward pass.
    return timings, ratios, report, abs(report.loss - float(loss(variables["params"])))


def run(quick: bool = False) -> dict:
    """Runs the benchmark; returns its JSON record."""
    cfg = _config(quick)
    repeats = cfg["repeats"]
    t_tf, r_tf, rep_tf, err_tf = _case(*_problem(cfg), repeats)
    lstm_options = {"apply_kwargs": {"train": True}, "rngs": {"dropout": jax.random.key(2)}}
    t_lstm, r_lstm, rep_lstm, err_lstm = _case(*_lstm_problem(cfg), repeats, **lstm_options)
    targets = {"cold_over_grad_compile": "<= 2.0", "warm_over_cold": "<= 0.1"}
    return harness.record(
        NAME,
        config=cfg,
        timings={**t_tf, **{f"lstm_{k}": v for k, v in t_lstm.items()}},
        ratios={**r_tf, **{f"lstm_{k}": v for k, v in r_lstm.items()}},
        accuracy={"loss_abs_err": err_tf, "lstm_loss_abs_err": err_lstm},
        targets={**targets, **{f"lstm_{k}": v for k, v in targets.items()}},
        extra={
            "verdict": rep_tf.verdict,
            "blocks_found": len(rep_tf.activation_names),
            "lstm_verdict": rep_lstm.verdict,
            "lstm_axis_verdicts": dict(rep_lstm.axis_verdicts),
            "lstm_time_axes": len(rep_lstm.time_axes),
        },
    )


if __name__ == "__main__":
    from gradjax.utils.files import dumps_json

    print(dumps_json(run()))
