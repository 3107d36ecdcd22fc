"""``gradjax diagnose``: gradient-flow report for your model, a gradjax net or an example.

Three sources of a model:

* ``--model package.module:factory``: your own Flax (Linen or NNX) model or pure function;
  the factory takes no arguments and returns ``(model, params or None, (inputs, targets))``,
  optionally with a dict of ``rngs``/``apply_kwargs``/``mutable`` (see the zoo in
  ``examples/``, e.g. ``--model examples.transformer_preln:make``);
* a gradjax MLP (``--activation``, ``--depth``, ``--width``, ``--sigma-w``, ``--sigma-b``,
  ``--init``, ``--norm``, ``--residual``), diagnosed on Gaussian inputs and targets;
* ``--example cnn_digits | transformer_postln | transformer_preln``: a script of ``examples/``.

Writes ``report.txt``, ``report.json`` and ``report.png`` (+ PDF) into ``--out`` and prints
the text report.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

from gradjax.commands.common import (
    choice,
    flag,
    flags,
    library_choice,
    nonnegative_real,
    out_dir,
    positive_int,
    positive_real,
    renamed_field,
    seed,
    writable_dir,
)
from gradjax.utils.files import claim_output_dir

# name -> (example script, make_problem keyword arguments)
EXAMPLES = {
    "cnn_digits": ("diagnose_cnn_digits.py", {"variant": "sigmoid"}),
    "cnn_digits_fixed": ("diagnose_cnn_digits.py", {"variant": "relu_he"}),
    "transformer_postln": ("prenorm_vs_postnorm_transformer.py", {"variant": "post"}),
    "transformer_preln": ("prenorm_vs_postnorm_transformer.py", {"variant": "pre"}),
}

# The MLP flags and their defaults (an --example run refuses any of them changed).
MLP_DEFAULTS = {
    "activation": "tanh",
    "init": "gaussian",
    "depth": 20,
    "width": 64,
    "sigma_w": 1.0,
    "sigma_b": 0.0,
    "norm": None,
    "residual": None,
}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "diagnose",
        help="gradient-flow report (verdict per region, suggestions) for your model or a net",
        description="Diagnoses gradient flow: ||dL/da_l|| per block, growth rate per block, "
        "verdicts (vanishing < 0.1x, exploding > 10x the output block's gradient), "
        "and suggested fixes. Writes report.txt/.json/.png to --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--model",
        default=None,
        metavar="MODULE:FACTORY",
        help="your model: an importable module and a factory returning "
        "(model, params or None, (inputs, targets)[, {'rngs': ..., 'apply_kwargs': ...}]), "
        "e.g. examples.transformer_preln:make",
    )
    source.add_argument(
        "--example",
        default=None,
        choices=sorted(EXAMPLES),
        help="diagnose an example script's model instead of a gradjax MLP",
    )
    p.add_argument(
        "--loss",
        default="mse",
        type=choice("mse", "xent"),
        help="loss of --model's outputs and targets: mse or xent",
    )
    mlp = p.add_argument_group("gradjax MLP (not with --example; with --model only --activation)")
    mlp.add_argument(
        "--activation",
        default="tanh",
        **library_choice("gradjax.meanfield.names", "ACTIVATION_NAMES"),
        metavar="ACTIVATION",
        help="activation (with --model: the model's, for init advice); one of %(choices)s",
    )
    mlp.add_argument(
        "--init",
        default="gaussian",
        **library_choice("gradjax.nets.config", "INIT_KINDS"),
        metavar="INIT",
        help="weight init; one of %(choices)s",
    )
    mlp.add_argument("--depth", type=positive_int, default=MLP_DEFAULTS["depth"], help="blocks")
    mlp.add_argument(
        "--width", type=positive_int, default=MLP_DEFAULTS["width"], help="hidden width"
    )
    mlp.add_argument(
        "--sigma-w",
        type=positive_real,
        default=MLP_DEFAULTS["sigma_w"],
        help="weight scale",
    )
    mlp.add_argument(
        "--sigma-b",
        type=nonnegative_real,
        default=MLP_DEFAULTS["sigma_b"],
        help="bias std",
    )
    mlp.add_argument("--norm", default=None, choices=["batch", "layer"], help="normalisation")
    mlp.add_argument(
        "--residual", default=None, choices=["plain", "scaled", "skipinit"], help="residual kind"
    )
    p.add_argument("--batch", type=positive_int, default=64, help="examples in the batch")
    p.add_argument("--seed", type=seed, default=0, help="PRNG seed in [0, 2**63 - 1]")
    p.add_argument(
        "--lr",
        type=positive_real,
        default=None,
        help="planned learning rate: probe the first optimiser step at it",
    )
    p.add_argument(
        "--optimizer",
        default="adam",
        choices=["adam", "sgd"],
        help="optimiser of the first-step probe",
    )
    p.add_argument(
        "--spectra",
        action="store_true",
        help="with --model or --example: also measure the Jacobian spectrum of every "
        "block-to-block map (matrix-free; gradjax's MLP always has its layer spectra)",
    )
    p.add_argument("--out", type=out_dir, required=True, help="output directory")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into --out even where it holds files of the same names that gradjax did "
        "not write (refused otherwise)",
    )
    p.set_defaults(run=run)


def _written_by_diagnose(out: Path) -> bool:
    """A ``report.json`` that is a gradjax report (written before directories were marked)."""
    try:
        data = json.loads((out / "report.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"verdict", "thresholds"} <= set(data)


def run(args: argparse.Namespace) -> int:
    from gradjax.nets.config import NetConfig
    from gradjax.utils.errors import GradjaxInputError

    cfg = None
    if args.model is not None:
        # The factory defines the model: MLP flags would be silently ignored, so they are
        # refused (--activation is kept: it names the model's activation for the advice).
        _refuse_mlp_flags(args, "--model (the factory defines its own model)", keep="activation")
        from gradjax.commands.factory import load_factory

        # Loaded before --out is created: a refused model leaves nothing behind.
        loaded = load_factory(args.model)
    elif args.example is not None:
        # An example is its own model: MLP flags would be silently ignored, so they are refused.
        _refuse_mlp_flags(args, f"--example={args.example!r} (the example defines its own model)")
    else:
        from gradjax.sweeps.cost import check_fits, estimate_network_bytes, memory_limit_bytes

        # A size that cannot fit is refused here, in one line, before XLA would abort.
        check_fits(
            f"--width={args.width} --depth={args.depth} --batch={args.batch}: one network",
            estimate_network_bytes(args.width, args.depth, args.batch),
            memory_limit_bytes(),
            unit="one gradient pass",
        )
        try:  # checked before --out is created, so a refusal leaves nothing behind
            cfg = NetConfig(
                depth=args.depth,
                width=args.width,
                activation=args.activation,
                init=args.init,
                sigma_w=args.sigma_w,
                sigma_b=args.sigma_b,
                norm=args.norm,
                residual=args.residual,
            )
        except GradjaxInputError as err:
            raise renamed_field(err, flags(*MLP_DEFAULTS)) from None
    out = writable_dir(args.out)
    claim_output_dir(
        out,
        "diagnose",
        [f"report.{ext}" for ext in ("txt", "json", "png", "pdf")],
        overwrite=args.overwrite,
        legacy=_written_by_diagnose,
    )
    probe = {"lr": args.lr, "optimizer": args.optimizer}

    import jax

    from gradjax.diagnosis.pipeline import diagnose, diagnose_net

    if args.model is not None:
        activation = args.activation if args.activation != MLP_DEFAULTS["activation"] else None
        report = diagnose(
            loaded.model,
            loaded.params,
            loaded.batch,
            args.loss,
            hints={"activation": activation},
            spectra=args.spectra,
            **loaded.options,
            **(probe if args.lr is not None else {}),
        )
        title = f"{args.model}: {report.verdict}"
    elif args.example is not None:
        problem = _example_problem(args.example, batch=args.batch, seed=args.seed)
        options = dict(problem.get("options", {}))
        if args.lr is not None:
            options.update(probe)
        report = diagnose(
            problem["apply_fn"], problem["params"], problem["batch"], problem["loss_fn"],
            spectra=args.spectra, **options,
        )  # fmt: skip
        title = f"example {args.example}: {report.verdict}"
    else:
        from gradjax.nets import models

        net = models.build(cfg)
        k_init, k_x, k_y = jax.random.split(jax.random.key(args.seed), 3)
        params = net.init(k_init)
        x = jax.random.normal(k_x, (args.batch, cfg.input_dim), net.dtype)
        y = jax.random.normal(k_y, (args.batch, cfg.out_dim), net.dtype)
        report = diagnose_net(net, params, x, y, **(probe if args.lr is not None else {}))
        title = (
            f"{args.activation} MLP, depth {args.depth}, width {args.width}, "
            f"$\\sigma_w$={args.sigma_w:g} ({args.init}): {report.verdict}"
        )

    from gradjax.utils.files import atomic_write_json, atomic_write_text
    from gradjax.utils.plotting import save_figure

    text = report.summary()
    atomic_write_text(out / "report.txt", text + "\n")
    atomic_write_json(out / "report.json", report.to_dict())
    save_figure(report.plot(title=title), out / "report")
    print(text)
    return 0


def _refuse_mlp_flags(args: argparse.Namespace, source: str, keep: str | None = None) -> None:
    """Refuses an MLP flag changed from its default where ``source`` defines the model.

    Args:
      args: the parsed flags.
      source: the flag that defines the model and why, for the message.
      keep: an MLP field allowed with ``source``.

    Raises:
      GradjaxInputError: naming the first changed flag, its value and ``source``.
    """
    from gradjax.utils.errors import GradjaxInputError

    for field, default in MLP_DEFAULTS.items():
        if field != keep and getattr(args, field) != default:
            raise GradjaxInputError(
                f"{flag(field)}={getattr(args, field)!r} is invalid: expected no MLP flag with "
                f"{source}"
            )


def _example_problem(name: str, *, batch: int, seed: int) -> dict:
    from gradjax.utils.errors import GradjaxInputError

    script, kwargs = EXAMPLES[name]
    # The examples are scripts of the source tree, next to the gradjax package.
    path = Path(__file__).resolve().parents[2] / "examples" / script
    if not path.is_file():
        raise GradjaxInputError(
            f"--example={name!r} is invalid: expected a source checkout with "
            f"examples/{script} next to the gradjax package"
        )
    spec = importlib.util.spec_from_file_location(f"gradjax_example_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    # Registered first: dataclass-based modules (Flax Linen) look themselves up while loading.
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        return module.make_problem(batch=batch, seed=seed, **kwargs)
    except GradjaxInputError:
        raise
    except Exception as err:  # a broken example is reported as one line, not a traceback
        reason = " ".join(f"{type(err).__name__}: {err}".split())[:300]
        raise GradjaxInputError(
            f"--example={name!r} is invalid: examples/{script} failed to build its model ({reason})"
        ) from None
