"""``gradjax sweep``: per-layer gradient norms and Jacobian spectra over seeds x sigma_w."""

from __future__ import annotations

import argparse

from gradjax.commands.common import (
    choice,
    flags,
    grid,
    nonnegative_int,
    out_dir,
    positive_int,
    positive_real,
    renamed_field,
    writable_dir,
)
from gradjax.utils.files import dumps_json

# Library argument -> command-line flag, for the errors the library raises.
FLAGS = flags(
    "sigma_w",
    "sigma_b",
    "seeds",
    "devices",
    "memory_budget_mb",
    "depth",
    "width",
    "activation",
    "init",
    "batch",
    out_dir="--out",
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="per-layer gradient norms and Jacobian spectra over seeds x sigma_w",
        description="Runs gradient-norm and exact Jacobian-spectrum probes on every "
        "(seed, sigma_w[, sigma_b]) network, writes arrays.npz + meta.json and sweep.png. "
        "The output directory is resumable: finished chunks are kept, so rerunning the same "
        "command after an interruption continues where it stopped; a different sweep for the "
        "same directory is refused. Chunks are sharded over all devices (--devices N for "
        "fewer); with --distributed every host of a multi-host run joins the same sweep.",
    )
    p.add_argument(
        "--model",
        default=None,
        metavar="MODULE:FACTORY",
        help="sweep your model instead of a gradjax MLP: a factory returning (model, params or "
        "None, (inputs, targets)[, {'rngs': ..., 'apply_kwargs': ...}]); --sigma-w then scales "
        "the kernels of the model's own init (1 = as initialised) and the probe is "
        "||dL/da_l|| per block and ||dL/dh_t|| per step of every recurrence",
    )
    p.add_argument(
        "--kernels",
        default=None,
        metavar="PATTERN",
        help="with --model: scale only the kernels whose path matches this regular expression "
        "(e.g. 'cell/h' for an RNN cell's recurrent kernel); default every kernel",
    )
    p.add_argument(
        "--loss", default="mse", type=choice("mse", "xent"), help="loss of --model: mse or xent"
    )
    p.add_argument("--activation", default="tanh", help="activation name (default tanh)")
    p.add_argument("--init", default="gaussian", help="weight init (default gaussian)")
    p.add_argument("--depth", type=positive_int, default=32)
    p.add_argument("--width", type=positive_int, default=128)
    p.add_argument("--seeds", type=positive_int, default=8)
    p.add_argument("--sigma-w", type=grid(), default="0.5:2.5:8", help="start:stop:count or a,b,c")
    p.add_argument("--sigma-b", type=grid(), default=None, help="fixed value or a grid (default 0)")
    p.add_argument("--batch", type=positive_int, default=16, help="examples for gradients")
    p.add_argument(
        "--memory-budget-mb",
        type=positive_real,
        default=None,
        help="MiB per chunk (default: half the accelerator's memory; 1024 on a CPU)",
    )
    p.add_argument("--out", type=out_dir, required=True, help="output directory (resumable)")
    p.add_argument(
        "--devices",
        type=positive_int,
        default=None,
        help="use the first N devices (default: all accelerators of all hosts; one on CPU)",
    )
    dist = p.add_argument_group("multi-host (see gradjax.sweeps.distributed for the launch)")
    dist.add_argument(
        "--distributed",
        action="store_true",
        help="join a multi-host JAX run first (cluster auto-detected unless given below)",
    )
    dist.add_argument("--coordinator", default=None, help="host:port of process 0")
    dist.add_argument("--num-processes", type=positive_int, default=None)
    dist.add_argument("--process-id", type=nonnegative_int, default=None)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from gradjax.nets.config import NetConfig
    from gradjax.utils.errors import GradjaxInputError, invalid

    if not args.distributed and (
        args.coordinator is not None
        or args.num_processes is not None
        or args.process_id is not None
    ):
        raise invalid("--distributed", False, "--distributed with --coordinator/--num-processes")
    if args.distributed:
        # Before any other JAX call: the backend must start knowing about the other hosts.
        from gradjax.sweeps import distributed

        distributed.initialize(
            coordinator_address=args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )

    sigma_w, sigma_b = args.sigma_w, args.sigma_b  # float64 grids, parsed by grid()
    fixed_b = 0.0
    if sigma_b is not None and sigma_b.size == 1:
        fixed_b, sigma_b = float(sigma_b[0]), None
    try:
        cfg = NetConfig(
            depth=args.depth,
            width=args.width,
            activation=args.activation,
            init=args.init,
            sigma_b=fixed_b,
        )
        if args.devices is not None and not args.distributed:
            # Refused before the output directory is made, so a refusal leaves nothing behind.
            from gradjax.sweeps.distributed import select_devices

            select_devices(args.devices, default=())
    except GradjaxInputError as err:
        raise renamed_field(err, FLAGS) from None
    loaded = None
    if args.model is not None:
        from gradjax.commands.factory import load_factory

        loaded = load_factory(args.model)  # before --out is made: a refusal leaves nothing
    out = writable_dir(args.out)

    from gradjax.measure import probes
    from gradjax.nets import models
    from gradjax.utils import plotting

    if loaded is not None:
        return _sweep_model(args, loaded, sigma_w, sigma_b, out)
    net = models.build(cfg)
    probe = probes.layer_gradient_and_spectrum_probe(net, batch=args.batch)
    result = _run_sweep(
        args,
        net,
        probe,
        f"layer_gradient_and_spectrum_probe(batch={args.batch})",
        sigma_w,
        sigma_b,
        out,
    )
    import jax

    if jax.process_index() != 0:
        return 0  # process 0 writes the figure and the summary
    if sigma_b is None:
        plotting.save_figure(plotting.plot_sweep_layers(result), out / "sweep")
    summary = {
        "out": str(out),
        "axes": list(result.axes),
        "first_layer_grad_median": [float(v) for v in _median(result["gradients.weights"][..., 0])],
        "sigma_w": [float(v) for v in result.coords["sigma_w"]],
    }
    print(dumps_json(summary))  # standard JSON: non-finite values as strings
    return 0


def _sweep_model(args, loaded, sigma_w, sigma_b, out) -> int:
    """``--model``: per-block ``||dL/da_l||`` (and per-step ``||dL/dh_t||``) over seeds x
    kernel scale of the user's model; the summary gives the scale where growth crosses 1."""
    import numpy as np

    from gradjax.boundary import sweepable
    from gradjax.measure.probes import block_gradient_probe
    from gradjax.utils import plotting
    from gradjax.utils.errors import GradjaxInputError
    from gradjax.utils.fitting import (
        crossing,
        growth_per_layer,
        growth_per_step,
        no_crossing_reason,
    )

    x, y = loaded.batch
    try:
        net = sweepable(loaded.model, loaded.params, x, kernels=args.kernels, **loaded.options)
    except GradjaxInputError as err:
        raise renamed_field(err, {**FLAGS, "kernels": "--kernels"}) from None
    probe = block_gradient_probe(net, (x, y), args.loss)
    result = _run_sweep(
        args,
        net,
        probe,
        f"block_gradient_probe({args.model}, loss={args.loss}, kernels={args.kernels!r})",
        sigma_w,
        sigma_b,
        out,
    )
    scales = np.asarray(result.coords["sigma_w"], np.float64)

    def mean_over_seeds(growth):  # (seed, sigma_w, ...) -> (sigma_w,), first sigma_b
        return np.nanmean(growth.reshape(growth.shape[0], growth.shape[1], -1)[..., 0], axis=0)

    curves = {}
    recurrent = "step_grad_norms" in result.data
    blocks = np.asarray(result["block_grad_norms"]).shape[-1]
    # With a recurrence, the depth axis counts only for a repeated stack of blocks.
    if blocks >= 2 and (not recurrent or net.boundary.blocks_repeat(x)):
        curves["per block"] = mean_over_seeds(
            growth_per_layer(np.asarray(result["block_grad_norms"]), axis=-1)
        )
    if recurrent:
        per_chain = growth_per_step(np.asarray(result["step_grad_norms"]), axis=-1)
        # Over recurrences: the geometric mean of their growth per step.
        curves["per step"] = mean_over_seeds(np.exp(np.nanmean(np.log(per_chain), axis=-1)))
    summary = {
        "out": str(out),
        "model": args.model,
        "blocks": net.cfg.blocks,
        "block_names": result.meta["labels"].get("block_grad_norms", []),
        "scaled_kernels": list(net.cfg.scaled),
        "sigma_w": [float(v) for v in scales],
    }
    for label, mean in curves.items():
        key = label.replace(" ", "_")
        summary[f"growth_{key}"] = [float(v) for v in mean]
        summary[f"critical_sigma_w_{key}"] = crossing(scales, mean)
        if summary[f"critical_sigma_w_{key}"] is None:
            summary[f"critical_sigma_w_{key}_reason"] = no_crossing_reason(scales, mean)
    # The headline scale: over time for a recurrent model, over depth otherwise.
    headline = "per_step" if "per step" in curves else "per_block"
    summary["critical_sigma_w"] = summary.get(f"critical_sigma_w_{headline}")
    if summary["critical_sigma_w"] is None:
        summary["critical_sigma_w_reason"] = summary.get(
            f"critical_sigma_w_{headline}_reason", "fewer than two blocks and no recurrence"
        )
    if curves:
        fig = plotting.plot_growth_curves(
            scales, curves, title=f"{args.model}: kernels {args.kernels or 'all'}"
        )
        plotting.save_figure(fig, out / "sweep")
    print(dumps_json(summary))
    return 0


def _median(values):
    import numpy as np

    return np.median(values.reshape(values.shape[0], values.shape[1], -1)[..., 0], axis=0)


def _run_sweep(args, net, probe, probe_name, sigma_w, sigma_b, out):
    """The library sweep with the command's settings; refusals name the flags, leave nothing."""
    from gradjax.sweeps.engine import sweep as _sweep
    from gradjax.utils.errors import GradjaxInputError

    try:
        return _sweep(
            net,
            probe,
            seeds=args.seeds,
            sigma_w=sigma_w,
            sigma_b=sigma_b,
            memory_budget_mb=args.memory_budget_mb,
            progress=True,
            probe_name=probe_name,
            devices=args.devices,
            out_dir=out,
        )
    except GradjaxInputError as err:
        # A refusal before any work leaves no directory (commands.common.remove_unused_dirs).
        # The library names its arguments (out_dir, sigma_w); the error names the flags.
        raise renamed_field(err, FLAGS) from None
