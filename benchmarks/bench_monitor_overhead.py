"""Overhead of the per-module gradient-norm monitor on a training step; diagnose's time.

Timed in one run, compilation excluded:
  * ``plain``: ``lax.scan`` over SGD steps of a gradjax MLP on the digits (what a user trains);
  * ``monitored``: the same scan with ``gj.monitor(optax.sgd(...))``, the per-module norms
    of every step returned as the scan's outputs (the way a history is recorded);
  * the same pair for the Linen CNN of ``examples/diagnose_cnn_digits.py`` (nine modules);
  * ``diagnose_*``: one end-to-end :func:`gradjax.diagnose` call on each example model, as
    a user runs it (tracing and compilation included: a diagnosis is a one-off).

``overhead_fraction`` = median over paired rounds of ``monitored / plain - 1`` (target
<= 0.05).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gradjax as gj
from gradjax.benchmarks import harness
from gradjax.data import digits

NAME = "monitor_overhead"


def _config(quick: bool) -> dict:
    if quick:
        return {"depth": 4, "width": 64, "batch": 64, "steps": 20, "cnn_steps": 5}
    return {"depth": 8, "width": 256, "batch": 128, "steps": 100, "cnn_steps": 40}


def _scan_pair(loss, params, tx_plain, tx_mon, idx):
    """Jitted plain and monitored training scans over the batches ``idx``."""

    def make(tx, record):
        def step(carry, batch_idx):
            p, s = carry
            g = jax.grad(loss)(p, batch_idx)
            updates, s = tx.update(g, s, p)
            out = gj.latest_norms(s) if record else None
            return (optax.apply_updates(p, updates), s), out

        return jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), idx))

    return make(tx_plain, False), make(tx_mon, True)


def _time_pair(plain, monitored, params, rounds):
    """Paired timing: each round times plain then monitored back to back (median of 3 calls
    each), so drifting load on a shared machine hits both alike; the overhead is the median
    of the per-round ratios."""
    harness.block(plain(params))  # compile both first
    harness.block(monitored(params))
    t_plain, t_mon, ratios = [], [], []
    for _ in range(rounds):
        a = harness.time_fn(lambda: plain(params), repeats=3, warmup=0)
        b = harness.time_fn(lambda: monitored(params), repeats=3, warmup=0)
        t_plain.append(a["median"])
        t_mon.append(b["median"])
        ratios.append(b["median"] / a["median"])
    summary = lambda ts: {
        "median": float(np.median(ts)),
        "min": float(np.min(ts)),
        "max": float(np.max(ts)),
        "repeats": len(ts),
    }
    return summary(t_plain), summary(t_mon), float(np.median(ratios)) - 1.0


def _example(script: str):
    path = Path(__file__).resolve().parents[1] / "examples" / script
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location(f"bench_example_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    # Registered first: dataclass-based modules (Flax Linen) look themselves up while loading.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _time_diagnose(problem: dict, quick: bool) -> dict:
    """Times one end-to-end ``gj.diagnose`` call on an example problem, compilation included."""
    return harness.time_fn(
        lambda: (
            gj.diagnose(
                problem["apply_fn"],
                problem["params"],
                problem["batch"],
                problem["loss_fn"],
                **problem["options"],
            ).loss
        ),
        repeats=1 if quick else 2,
        warmup=0,
    )


def run(quick: bool = False) -> dict:
    """Runs the benchmark; returns its JSON record."""
    cfg = _config(quick)
    rounds = 3 if quick else 9
    data = digits()
    steps, batch = cfg["steps"], cfg["batch"]
    idx = jax.random.randint(jax.random.key(1), (steps, batch), 0, data.x_train.shape[0])

    # --- gradjax MLP on the digits
    net = gj.build(
        gj.NetConfig(
            depth=cfg["depth"],
            width=cfg["width"],
            input_dim=64,
            out_dim=10,
            activation="tanh",
            init="critical",
        )
    )
    params = net.init(jax.random.key(0))

    def mlp_loss(p, batch_idx):
        return gj.cross_entropy_loss(net.apply(p, data.x_train[batch_idx]), data.y_train[batch_idx])

    plain, monitored = _scan_pair(
        mlp_loss, params, optax.sgd(0.05), gj.monitor(optax.sgd(0.05)), idx
    )
    t_plain, t_mon, overhead = _time_pair(plain, monitored, params, rounds)
    # Accuracy: the monitored run takes the same steps as the plain one.
    (p_a, _), norms = monitored(params)
    (p_b, _), _ = plain(params)
    max_param_diff = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree.leaves(p_a), jax.tree.leaves(p_b), strict=True)
    )
    timings = {"mlp_plain": t_plain, "mlp_monitored": t_mon}
    ratios = {"overhead_fraction": overhead}
    extra = {"mlp_groups": len(norms), "per_step_s": t_plain["median"] / steps}

    # --- the example models
    cnn = _example("diagnose_cnn_digits.py")
    transformer = _example("prenorm_vs_postnorm_transformer.py")
    if cnn is not None:
        problem = cnn.make_problem(variant="relu_he")
        model = problem["model"]
        cnn_idx = idx[: cfg["cnn_steps"]]

        def cnn_loss(p, batch_idx):
            logits = model.apply({"params": p}, data.x_train[batch_idx])
            return cnn.loss_fn(logits, data.y_train[batch_idx])

        cnn_params = problem["params"]["params"]
        plain_c, mon_c = _scan_pair(
            cnn_loss, cnn_params, optax.sgd(0.05), gj.monitor(optax.sgd(0.05)), cnn_idx
        )
        tc_plain, tc_mon, overhead_cnn = _time_pair(plain_c, mon_c, cnn_params, rounds)
        timings.update({"cnn_plain": tc_plain, "cnn_monitored": tc_mon})
        ratios["overhead_fraction_cnn"] = overhead_cnn

        for variant in ("sigmoid", "relu_he"):
            timings[f"diagnose_cnn_{variant}"] = _time_diagnose(
                cnn.make_problem(variant=variant), quick
            )
    if transformer is not None:
        for variant in ("post", "pre"):
            problem = transformer.make_problem(variant=variant)
            timings[f"diagnose_transformer_{variant}ln"] = _time_diagnose(problem, quick)
    return harness.record(
        NAME,
        config=cfg,
        timings=timings,
        ratios=ratios,
        accuracy={"max_abs_param_diff_monitored_vs_plain": max_param_diff},
        targets={"overhead_fraction": "<= 0.05", "overhead_fraction_cnn": "<= 0.05"},
        extra=extra,
    )


if __name__ == "__main__":
    from gradjax.io import dumps_json

    print(dumps_json(run()))
