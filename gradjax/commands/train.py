"""``gradjax train``: train many seeds of a deep network with a mitigation chain."""

from __future__ import annotations

import argparse
import json

from gradjax.commands.common import positive_int, writable_dir


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train seeds of a deep net with clipping / warm-up / L1 / L2 (vmapped)",
        description="Trains --seeds copies of a deep fully connected network on the digits "
        "(or a teacher-student task) in one compiled program; writes history.npz, meta.json, "
        "curves.png/pdf, and prints a JSON summary (divergence rate, test accuracy).",
    )
    p.add_argument("--activation", default="relu", help="activation name (default relu)")
    p.add_argument("--init", default="he", help="weight init (default he)")
    p.add_argument("--sigma-w", type=_float, default=1.0, help="weight scale (default 1)")
    p.add_argument("--depth", type=positive_int, default=20)
    p.add_argument("--width", type=positive_int, default=128)
    p.add_argument("--seeds", type=positive_int, default=8)
    p.add_argument("--dataset", default="digits", help="digits or teacher_student")
    p.add_argument("--optimizer", default="sgd", help="sgd, momentum or adam")
    p.add_argument("--lr", type=_float, default=0.01, help="peak learning rate")
    p.add_argument("--steps", type=_int, default=1000)
    p.add_argument("--batch-size", type=_int, default=128)
    p.add_argument("--warmup", type=_int, default=0, help="warm-up steps (default 0)")
    p.add_argument("--clip", type=_float, default=None, help="max global grad norm")
    p.add_argument("--weight-decay", type=_float, default=0.0, help="L2 coefficient")
    p.add_argument("--l1", type=_float, default=0.0, help="L1 coefficient")
    p.add_argument("--seed", type=_int, default=0, help="root PRNG seed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from gradjax.config import NetConfig, TrainConfig
    from gradjax.errors import check_int

    check_int("--seed", args.seed, minimum=0)
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
    from gradjax import data as gdata

    data = gdata.get_dataset(args.dataset)
    cfg = NetConfig(
        depth=args.depth,
        width=args.width,
        in_dim=data.in_dim,
        out_dim=data.num_classes,
        activation=args.activation,
        init=args.init,
        sigma_w=args.sigma_w,
    )
    out = writable_dir(args.out)

    import numpy as np

    from gradjax import models, plotting
    from gradjax.train import divergence_rate, plot_training, seed_quantiles, train

    net = models.build(cfg)
    result = train(net, data, tcfg, seeds=args.seeds, key=args.seed, progress=not args.no_progress)
    result.save(out)
    plotting.save_figure(plot_training(result), out / "curves")
    h = result.history
    acc = seed_quantiles(np.asarray(h.test.accuracy))
    rate = divergence_rate(h)
    summary = {
        "out": str(out),
        "divergence_rate": float(rate.rate[0]),
        "divergence_rate_95ci": [float(rate.low[0]), float(rate.high[0])],
        "first_nonfinite_step": [int(v) for v in np.asarray(h.first_nonfinite)[0]],
        "test_accuracy_median": float(acc.median[0]),
        "test_accuracy_iqr": [float(acc.q25[0]), float(acc.q75[0])],
        "final_loss_median": float(seed_quantiles(np.asarray(h.loss)[..., -1]).median[0]),
    }
    print(json.dumps(summary, indent=2))
    return 0
