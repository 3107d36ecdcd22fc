"""Overhead of the per-module gradient-norm monitor on a training step; diagnose's time.

Timed in one run, compilation excluded:
  * ``plain``: ``lax.scan`` over SGD steps of a gradjax MLP on the digits (what a user trains);
  * ``monitored``: the same scan with ``gj.monitor(optax.sgd(...))``, the per-module norms
    of every step returned as the scan's outputs (the way a history is recorded);
  * the same pair for a small Flax Linen CNN on the digits (:class:`DigitsCNN`, nine
    modules), defined here so that the benchmark runs from an installed package too;
  * ``diagnose_*``: one end-to-end :func:`gradjax.diagnose` call on each example model of
    the source tree's ``examples/``, as a user runs it (tracing and compilation included: a
    diagnosis is a one-off). An installed package has no ``examples/``: the record then
    says so under ``diagnose_examples_missing`` instead of the timings.

``overhead_fraction`` (MLP) and ``overhead_fraction_cnn`` = median over paired rounds of
``monitored / plain - 1`` (target <= 0.05 each).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

import gradjax as gj
from gradjax.benchmarks import harness
from gradjax.training.data import digits

NAME = "monitor_overhead"
# The source tree's examples (absent from an installed package).
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# script -> {make_problem variant: timing label}
EXAMPLE_VARIANTS = {
    "diagnose_cnn_digits.py": {"sigmoid": "cnn_sigmoid", "relu_he": "cnn_relu_he"},
    "prenorm_vs_postnorm_transformer.py": {
        "post": "transformer_postln",
        "pre": "transformer_preln",
    },
}


class DigitsCNN(nn.Module):
    """``depth`` 3x3 convolutions (ReLU, He init) on the 8x8 digits, average pooling, a head.

    Each convolution is a Dense layer over the 3x3 'SAME' neighbourhoods of every pixel
    (im2col: the function, parameters and fan-in of ``nn.Conv``). XLA's CPU convolution is
    tens of times slower at this size; a slow step would hide what the monitor costs.
    """

    depth: int = 8
    features: int = 16

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.reshape(x.shape[0], 8, 8, 1)
        for layer in range(self.depth):
            padded = jnp.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
            shifted = [padded[:, i : i + 8, j : j + 8] for i in range(3) for j in range(3)]
            conv = nn.Dense(
                self.features, kernel_init=nn.initializers.he_normal(), name=f"conv{layer}"
            )
            h = nn.relu(conv(jnp.concatenate(shifted, axis=-1)))
        return nn.Dense(10, name="head")(jnp.mean(h, axis=(1, 2)))


def _config(quick: bool) -> dict:
    if quick:
        return {"depth": 4, "width": 64, "batch": 64, "steps": 20, "cnn_depth": 8, "cnn_steps": 5}
    return {"depth": 8, "width": 256, "batch": 128, "steps": 100, "cnn_depth": 8, "cnn_steps": 40}


def _scan_pair(loss, idx, lr: float = 0.05):
    """Jitted SGD training scans over the batches ``idx``: plain, and with the monitor."""

    def make(tx, record):
        def step(carry, batch_idx):
            p, s = carry
            g = jax.grad(loss)(p, batch_idx)
            updates, s = tx.update(g, s, p)
            out = gj.latest_norms(s) if record else None
            return (optax.apply_updates(p, updates), s), out

        return jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), idx))

    return make(optax.sgd(lr), False), make(gj.monitor(optax.sgd(lr)), True)


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
    """The module of ``examples/<script>`` in the source tree, or ``None`` when not there."""
    path = EXAMPLES / script
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


def _monitor_case(loss, params, idx, rounds: int) -> dict:
    """Plain and monitored SGD scans of ``loss`` over the batches ``idx``, timed in pairs.

    Returns:
      ``{"plain", "monitored"}`` timings, the ``overhead`` fraction, ``param_diff`` (the
      largest difference between the parameters both scans end with: 0 when the monitor
      changes no step) and the number of ``groups`` it records.
    """
    plain, monitored = _scan_pair(loss, idx)
    t_plain, t_mon, overhead = _time_pair(plain, monitored, params, rounds)
    (p_mon, _), norms = monitored(params)
    (p_plain, _), _ = plain(params)
    diff = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree.leaves(p_mon), jax.tree.leaves(p_plain), strict=True)
    )
    return {
        "plain": t_plain,
        "monitored": t_mon,
        "overhead": overhead,
        "param_diff": diff,
        "groups": len(norms),
    }


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

    mlp = _monitor_case(mlp_loss, params, idx, rounds)

    # --- a Flax Linen CNN on the digits
    model = DigitsCNN(depth=cfg["cnn_depth"])
    cnn_params = model.init(jax.random.key(0), data.x_train[:1])["params"]

    def cnn_loss(p, batch_idx):
        logits = model.apply({"params": p}, data.x_train[batch_idx])
        return gj.cross_entropy_loss(logits, data.y_train[batch_idx])

    cnn = _monitor_case(cnn_loss, cnn_params, idx[: cfg["cnn_steps"]], rounds)

    timings = {
        f"{name}_{kind}": case[kind]
        for name, case in (("mlp", mlp), ("cnn", cnn))
        for kind in ("plain", "monitored")
    }
    ratios = {"overhead_fraction": mlp["overhead"], "overhead_fraction_cnn": cnn["overhead"]}
    # Accuracy: the monitored runs take the same steps as the plain ones.
    accuracy = {
        "max_abs_param_diff_monitored_vs_plain": mlp["param_diff"],
        "max_abs_param_diff_monitored_vs_plain_cnn": cnn["param_diff"],
    }
    extra = {
        "mlp_groups": mlp["groups"],
        "per_step_s": mlp["plain"]["median"] / steps,
        "cnn_groups": cnn["groups"],
        "cnn_per_step_s": cnn["plain"]["median"] / cfg["cnn_steps"],
    }

    # --- diagnose on the example models of the source tree
    missing = []
    for script, variants in EXAMPLE_VARIANTS.items():
        example = _example(script)
        if example is None:
            missing.append(f"examples/{script}")
            continue
        for variant, label in variants.items():
            problem = example.make_problem(variant=variant)
            timings[f"diagnose_{label}"] = _time_diagnose(problem, quick)
    if missing:
        extra["diagnose_examples_missing"] = (
            f"{', '.join(missing)} not found next to the benchmarks: an installed package has "
            "no examples/ (run from a source checkout to time diagnose on them)"
        )
    return harness.record(
        NAME,
        config=cfg,
        timings=timings,
        ratios=ratios,
        accuracy=accuracy,
        targets={"overhead_fraction": "<= 0.05", "overhead_fraction_cnn": "<= 0.05"},
        extra=extra,
    )


if __name__ == "__main__":
    from gradjax.utils.files import dumps_json

    print(dumps_json(run()))
