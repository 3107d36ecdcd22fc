"""gradjax: measure, explain and fix vanishing and exploding gradients in deep networks.

Example:
  >>> import jax, gradjax as gj
  >>> net = gj.build(gj.NetConfig(depth=8, width=16, activation="tanh", sigma_w=1.0))
  >>> res = gj.sweep(net, gj.probes.gradient_probe(net), seeds=2, sigma_w=[0.5, 1.0, 2.0],
  ...                progress=False)
  >>> res.axes, res["activations"].shape
  (('seed', 'sigma_w'), (2, 3, 8))

The package is laid out along the data flow, each subpackage using only those above it:

* ``gradjax.utils``: errors, files, numerics, fitting, pytree results, tree paths, threads,
  LAPACK calls, plotting helpers (nothing of gradjax's own);
* ``gradjax.meanfield``: mean-field theory, Gaussian expectations, the activation table;
* ``gradjax.nets``: ``NetConfig``, initialisers, gradjax's networks and their layout;
* ``gradjax.measure``: gradients, Jacobians, spectra, Lyapunov exponents, matrix-free
  estimates, Hessian sharpness, isometry, normalisation, residual stacks, sweep probes;
* ``gradjax.boundary``: a user's Linen / NNX model or pure function, seen one way;
* ``gradjax.diagnosis``: measure, judge, advise and report (``gj.diagnose``);
* ``gradjax.sweeps``: the sweep engine (``gj.sweep``), its store, cost model and devices;
* ``gradjax.training``: Optax chains, the training loop (``gj.train``), monitoring, data;
* ``gradjax.commands``: the ``gradjax`` command line.

The top level holds what a researcher calls most (``__all__``). The modules a researcher
reaches for are namespaces under their own names (``gj.theory``, ``gj.probes``,
``gj.spectra``, ...); the entry points ``gj.sweep``, ``gj.train``, ``gj.diagnose`` and
``gj.monitor`` are functions. Names are imported on first use, so
``import gradjax`` and ``gradjax --help`` load no JAX.
"""

import importlib as _importlib

# Namespace name -> module.
_NAMESPACES = {
    "errors": "gradjax.utils.errors",
    "files": "gradjax.utils.files",
    "numerics": "gradjax.utils.numerics",
    "fitting": "gradjax.utils.fitting",
    "pytree": "gradjax.utils.pytree",
    "tree_paths": "gradjax.utils.tree_paths",
    "threads": "gradjax.utils.threads",
    "lapack": "gradjax.utils.lapack",
    "plotting": "gradjax.utils.plotting",
    "theory": "gradjax.meanfield.theory",
    "gaussian": "gradjax.meanfield.gaussian",
    "activations": "gradjax.meanfield.activations",
    "models": "gradjax.nets.models",
    "layout": "gradjax.nets.layout",
    "initializers": "gradjax.nets.initializers",
    "config": "gradjax.nets.config",
    "gradients": "gradjax.measure.gradients",
    "jacobians": "gradjax.measure.jacobians",
    "spectra": "gradjax.measure.spectra",
    "lyapunov": "gradjax.measure.lyapunov",
    "matrix_free": "gradjax.measure.matrix_free",
    "hessian": "gradjax.measure.hessian",
    "isometry": "gradjax.measure.isometry",
    "normalization": "gradjax.measure.normalization",
    "residual": "gradjax.measure.residual",
    "probes": "gradjax.measure.probes",
    "forward": "gradjax.measure.forward",
    "measurement": "gradjax.diagnosis.measurement",
    "report": "gradjax.diagnosis.report",
    "verdicts": "gradjax.diagnosis.verdicts",
    "report_plot": "gradjax.diagnosis.report_plot",
    "advice": "gradjax.diagnosis.advice",
    "store": "gradjax.sweeps.store",
    "cost": "gradjax.sweeps.cost",
    "devices": "gradjax.sweeps.devices",
    "distributed": "gradjax.sweeps.distributed",
    "optim": "gradjax.training.optim",
    "data": "gradjax.training.data",
}

# Top-level name -> the module defining it.
_NAMES = {
    "activation_names": "gradjax.meanfield.activations",
    "get_activation": "gradjax.meanfield.activations",
    "NetConfig": "gradjax.nets.config",
    "TrainConfig": "gradjax.training.config",
    "Report": "gradjax.diagnosis.report",
    "Thresholds": "gradjax.diagnosis.report",
    "diagnose": "gradjax.diagnosis.pipeline",
    "diagnose_net": "gradjax.diagnosis.pipeline",
    "GradjaxInputError": "gradjax.utils.errors",
    "GradientNorms": "gradjax.measure.gradients",
    "LayerGradients": "gradjax.measure.gradients",
    "cross_entropy_loss": "gradjax.measure.gradients",
    "gradient_norms": "gradjax.measure.gradients",
    "layer_gradient_norms": "gradjax.measure.gradients",
    "layer_gradients": "gradjax.measure.gradients",
    "mse_loss": "gradjax.measure.gradients",
    "ChainRuleCheck": "gradjax.measure.jacobians",
    "LayerJacobians": "gradjax.measure.jacobians",
    "chain_rule_check": "gradjax.measure.jacobians",
    "io_jacobian": "gradjax.measure.jacobians",
    "layer_jacobians": "gradjax.measure.jacobians",
    "BlockSpectra": "gradjax.measure.block_spectra",
    "block_spectra": "gradjax.measure.block_spectra",
    "LyapunovSpectrum": "gradjax.measure.lyapunov",
    "lyapunov_spectrum": "gradjax.measure.lyapunov",
    "chi1_probe": "gradjax.measure.matrix_free",
    "empirical_chi1": "gradjax.measure.matrix_free",
    "layer_spectrum_estimates": "gradjax.measure.matrix_free",
    "matrix_free_probe": "gradjax.measure.matrix_free",
    "Net": "gradjax.nets.models",
    "build": "gradjax.nets.models",
    "from_nnx": "gradjax.nets.models",
    "NormHistory": "gradjax.training.monitor",
    "latest_norms": "gradjax.training.monitor",
    "module_group_norms": "gradjax.training.monitor",
    "monitor": "gradjax.training.monitor",
    "mitigation_chain": "gradjax.training.optim",
    "Probe": "gradjax.measure.probes",
    "ForwardStats": "gradjax.measure.forward",
    "forward_statistics": "gradjax.measure.forward",
    "SpectrumSummary": "gradjax.measure.spectra",
    "singular_values": "gradjax.measure.spectra",
    "spectrum_summary": "gradjax.measure.spectra",
    "summarize_spectrum": "gradjax.measure.spectra",
    "SweepResult": "gradjax.sweeps.engine",
    "sweep": "gradjax.sweeps.engine",
    "CriticalLine": "gradjax.meanfield.theory",
    "FixedPoint": "gradjax.meanfield.theory",
    "MeanField": "gradjax.meanfield.theory",
    "critical_line": "gradjax.meanfield.theory",
    "mean_field": "gradjax.meanfield.theory",
    "predicted_gradient_growth": "gradjax.meanfield.theory",
    "q_fixed_point": "gradjax.meanfield.theory",
    "TrainHistory": "gradjax.training.loop",
    "TrainResult": "gradjax.training.loop",
    "train": "gradjax.training.loop",
    "train_step": "gradjax.training.loop",
}

_SUBPACKAGES = (
    "utils",
    "meanfield",
    "nets",
    "measure",
    "boundary",
    "diagnosis",
    "sweeps",
    "training",
    "commands",
)


def __getattr__(name: str):
    if name in _NAMES:
        value = getattr(_importlib.import_module(_NAMES[name]), name)
    elif name in _NAMESPACES:
        value = _importlib.import_module(_NAMESPACES[name])
    elif name in _SUBPACKAGES:
        value = _importlib.import_module(f"gradjax.{name}")
    elif name == "__version__":
        value = _version()
    else:
        raise AttributeError(f"module 'gradjax' has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_NAMES, *_NAMESPACES, *_SUBPACKAGES, "__version__"})


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gradjax")
    except PackageNotFoundError:  # running from a source tree without an install
        return "0.0.0"


__all__ = [
    # Networks and configuration.
    "NetConfig",
    "TrainConfig",
    "Net",
    "build",
    "from_nnx",
    "get_activation",
    "activation_names",
    "GradjaxInputError",
    # Measurements on one network.
    "GradientNorms",
    "LayerGradients",
    "cross_entropy_loss",
    "gradient_norms",
    "layer_gradient_norms",
    "layer_gradients",
    "mse_loss",
    "ChainRuleCheck",
    "LayerJacobians",
    "chain_rule_check",
    "io_jacobian",
    "layer_jacobians",
    "SpectrumSummary",
    "singular_values",
    "spectrum_summary",
    "summarize_spectrum",
    "ForwardStats",
    "forward_statistics",
    "BlockSpectra",
    "block_spectra",
    "LyapunovSpectrum",
    "lyapunov_spectrum",
    "chi1_probe",
    "empirical_chi1",
    "layer_spectrum_estimates",
    "matrix_free_probe",
    # Mean-field theory.
    "CriticalLine",
    "FixedPoint",
    "MeanField",
    "critical_line",
    "mean_field",
    "predicted_gradient_growth",
    "q_fixed_point",
    # Sweeps.
    "Probe",
    "SweepResult",
    "sweep",
    # Training.
    "mitigation_chain",
    "TrainHistory",
    "TrainResult",
    "train",
    "train_step",
    # Diagnosing and monitoring.
    "Report",
    "Thresholds",
    "diagnose",
    "diagnose_net",
    "NormHistory",
    "latest_norms",
    "module_group_norms",
    "monitor",
    "__version__",
]
