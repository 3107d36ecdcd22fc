"""``gradjax train``: train many seeds of a deep network with a mitigation chain."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gradjax.commands.common import (
    check_path_room,
    flags,
    library_choice,
    nonnegative_int,
    nonnegative_real,
    out_dir,
    positive_int,
    positive_real,
    renamed_field,
    seed,
    writable_dir,
)
from gradjax.utils.files import dumps_json

# Library argument -> command-line flag, for the errors the library raises.
FLAGS = flags(
    "activation",
    "init",
    "sigma_w",
    "depth",
    "width",
    "seeds",
    "dataset",
    "optimizer",
    "steps",
    "batch_size",
    "clip",
    "weight_decay",
    "l1",
    out_dir="--out",
    learning_rate="--lr",
    warmup_steps="--warmup",
)
# A rough host throughput for the up-front time guess (small batched matmuls on a CPU core).
GUESS_FLOPS_PER_S = 1e10
# Runs guessed to take longer than this report their steps even with --no-progress.
LONG_RUN_S = 60.0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train seeds of a deep net with clipping / warm-up / L1 / L2 (vmapped)",
        description="Trains --seeds copies of a deep fully connected network on the digits "
        "(or a teacher-student task) in one compiled program; writes history.npz, meta.json, "
        "curves.png/pdf, and prints a JSON summary (divergence rate, test accuracy). The size "
        "of the run is estimated first: one that cannot fit in memory is refused before "
        "anything is written, and the estimate (FLOPs, a rough time) is printed on stderr. A "
        "directory holding a sweep or a different training run is refused.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    acts = library_choice("gradjax.meanfield.names", "ACTIVATION_NAMES")
    p.add_argument("--activation", default="relu", **acts, help="activation")
    p.add_argument(
        "--init",
        default="he",
        **library_choice("gradjax.nets.config", "INIT_KINDS"),
        help="weight init",
    )
    p.add_argument("--sigma-w", type=nonnegative_real, default=1.0, help="weight scale")
    p.add_argument("--depth", type=positive_int, default=20, help="blocks")
    p.add_argument("--width", type=positive_int, default=128, help="hidden width")
    p.add_argument("--seeds", type=positive_int, default=8, help="independent runs")
    p.add_argument(
        "--dataset",
        default="digits",
        **library_choice("gradjax.training.config", "DATASETS"),
        help="data",
    )
    p.add_argument(
        "--optimizer",
        default="sgd",
        **library_choice("gradjax.training.config", "OPTIMIZERS"),
        help="optimiser (adamw: Adam with --weight-decay decoupled)",
    )
    p.add_argument("--lr", type=positive_real, default=0.01, help="peak learning rate")
    p.add_argument("--steps", type=positive_int, default=1000, help="optimisation steps")
    p.add_argument("--batch-size", type=positive_int, default=128, help="examples per step")
    p.add_argument("--warmup", type=nonnegative_int, default=0, help="warm-up steps")
    p.add_argument(
        "--clip", type=positive_real, default=None, help="max global grad norm (None: no clipping)"
    )
    p.add_argument(
        "--weight-decay",
        type=nonnegative_real,
        default=0.0,
        help="L2 coefficient (decoupled for adamw)",
    )
    p.add_argument("--l1", type=nonnegative_real, default=0.0, help="L1 coefficient")
    p.add_argument("--seed", type=seed, default=0, help="root PRNG seed, in [0, 2**63)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", type=out_dir, required=True, help="output directory")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into --out even where it holds files of the same names that gradjax did "
        "not write (refused otherwise)",
    )
    p.set_defaults(run=run)


def _human_seconds(seconds: float) -> str:
    for unit, size in (("days", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.2g} s"


def run(args: argparse.Namespace) -> int:
    from gradjax.nets.config import NetConfig
    from gradjax.training.config import TrainConfig
    from gradjax.utils.errors import GradjaxInputError

    try:
        tcfg = TrainConfig(
            optimizer=args.optimizer,
            learning_rate=args.lr,
            steps=args.steps,
            batch_size=args.batch_size,
            warmup_steps=args.warmup,
            clip=args.clip,
            weight_decay=args.weight_decay,
            l1=args.l1,
        )
        from gradjax.training import data as gdata

        data = gdata.get_dataset(args.dataset)
        cfg = NetConfig(
            depth=args.depth,
            width=args.width,
            input_dim=data.input_dim,
            out_dim=data.num_classes,
            activation=args.activation,
            init=args.init,
            sigma_w=args.sigma_w,
        )
        from gradjax.nets import models
        from gradjax.training.estimate import check_fits
        from gradjax.training.run_folder import check_output_dir, run_meta

        net = models.build(cfg)
        # Refused before anything is written: a run that cannot fit, or a directory that
        # holds other results.
        estimate = check_fits(net, data, tcfg, seeds=args.seeds)
        meta = run_meta(net, data, tcfg, seeds=args.seeds, key=args.seed)
        check_path_room(Path(args.out), "--out")  # before the directory is looked into
        check_output_dir(args.out, meta)
    except GradjaxInputError as err:
        raise renamed_field(err, FLAGS) from None
    from gradjax.sweeps.cost import format_bytes

    # Checked before the estimate is printed, so a refused --out gives its one line only.
    out = writable_dir(args.out)
    from gradjax.training.run_folder import RUN_FILES
    from gradjax.utils.files import claim_output_dir

    claim_output_dir(
        out,
        "train",
        [*RUN_FILES, "curves.png", "curves.pdf"],
        overwrite=args.overwrite,
        # A meta.json of a training run: check_output_dir has accepted it as this run.
        legacy=lambda d: (d / "meta.json").exists(),
    )
    # Up front, so a very long run is never silent (with or without the progress bar).
    print(
        f"gradjax train: {estimate.steps} steps x {estimate.step_flops:.3g} FLOP per step = "
        f"{estimate.total_flops:.3g} FLOP (about "
        f"{_human_seconds(estimate.total_flops / GUESS_FLOPS_PER_S)} at "
        f"{GUESS_FLOPS_PER_S:.0e} FLOP/s), memory {format_bytes(estimate.bytes)}",
        file=sys.stderr,
    )

    import numpy as np

    from gradjax.training.loop import train
    from gradjax.training.plots import plot_training
    from gradjax.training.statistics import divergence_rate, seed_quantiles
    from gradjax.utils import plotting

    progress: object = not args.no_progress
    if args.no_progress and estimate.total_flops / GUESS_FLOPS_PER_S > LONG_RUN_S:
        # No bar was asked for, but a long run still says where it is: a line per tenth.
        def progress(done: int, total: int) -> None:
            print(f"gradjax train: step {done}/{total}", file=sys.stderr, flush=True)

    # Saved segment by segment: an interrupted or failed run continues where it stopped.
    result = train(net, data, tcfg, seeds=args.seeds, key=args.seed, progress=progress, out=out)
    plotting.save_figure(plot_training(result), out / "curves")
    h = result.history
    acc = seed_quantiles(np.asarray(h.test.accuracy))
    rate = divergence_rate(h)
    summary = {
        "out": str(out),
        "divergence_rate": rate.rate[0],
        "divergence_rate_95ci": [rate.low[0], rate.high[0]],
        "first_nonfinite_step": np.asarray(h.first_nonfinite)[0],
        "test_accuracy_median": acc.median[0],
        "test_accuracy_iqr": [acc.q25[0], acc.q75[0]],
        "final_loss_median": seed_quantiles(np.asarray(h.loss)[..., -1]).median[0],
    }
    print(dumps_json(summary))
    return 0
