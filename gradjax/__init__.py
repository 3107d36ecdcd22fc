"""gradjax: measure, explain and fix vanishing and exploding gradients in deep networks.

Example:
  >>> import jax, gradjax as gj
  >>> net = gj.build(gj.NetConfig(depth=32, width=128, activation="tanh", sigma_w=1.0))
  >>> res = gj.sweep(net, gj.probes.gradient_probe(net), seeds=4, sigma_w=[0.5, 1.0, 2.0])

The top level holds what a researcher calls most (``__all__``, grouped below); everything
else lives in a namespace, one per module: ``gj.theory``, ``gj.gaussian``, ``gj.spectra``,
``gj.matrix_free``, ``gj.isometry``, ``gj.lyapunov``, ``gj.normalization``, ``gj.residual``,
``gj.hessian``, ``gj.jacobians``, ``gj.gradients``, ``gj.signal``, ``gj.probes``,
``gj.optim``, ``gj.initializers``, ``gj.activations``, ``gj.config``, ``gj.layout``,
``gj.boundary``, ``gj.report`` (the diagnosis report and its verdicts), ``gj.advice``,
``gj.flow_measurement``, ``gj.report_plot``, ``gj.data``, ``gj.io``, ``gj.store``,
``gj.devices``, ``gj.distributed``, ``gj.cost``, ``gj.threads``, ``gj.errors``,
``gj.plotting``, ``gj.models``, ``gj.lapack``, and the shared primitives ``gj.numerics``
(overflow-safe norms), ``gj.fitting`` (growth fits) and ``gj.tree_paths`` (parameter path
names).

One rule for names: a module named after its entry point is reached through that entry
point, so ``gj.sweep``, ``gj.train``, ``gj.diagnose`` and ``gj.monitor`` are functions (their
result types are top-level names: ``gj.SweepResult``, ``gj.TrainResult``, ``gj.Report``,
``gj.NormHistory``); ``from gradjax.sweep import ...`` still reaches those modules.
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from gradjax import activations as activations
from gradjax import advice as advice
from gradjax import boundary as boundary
from gradjax import config as config
from gradjax import cost as cost
from gradjax import data as data
from gradjax import devices as devices
from gradjax import distributed as distributed
from gradjax import errors as errors
from gradjax import fitting as fitting
from gradjax import flow_measurement as flow_measurement
from gradjax import gaussian as gaussian
from gradjax import gradients as gradients
from gradjax import hessian as hessian
from gradjax import initializers as initializers
from gradjax import io as io
from gradjax import isometry as isometry
from gradjax import jacobians as jacobians
from gradjax import lapack as lapack
from gradjax import layout as layout
from gradjax import lyapunov as lyapunov
from gradjax import matrix_free as matrix_free
from gradjax import models as models
from gradjax import normalization as normalization
from gradjax import numerics as numerics
from gradjax import optim as optim
from gradjax import plotting as plotting
from gradjax import probes as probes
from gradjax import report as report
from gradjax import report_plot as report_plot
from gradjax import residual as residual
from gradjax import signal as signal
from gradjax import spectra as spectra
from gradjax import store as store
from gradjax import theory as theory
from gradjax import threads as threads
from gradjax import tree_paths as tree_paths
from gradjax.activations import activation_names as activation_names
from gradjax.activations import get_activation as get_activation

# Networks and configuration.
from gradjax.config import NetConfig as NetConfig
from gradjax.config import TrainConfig as TrainConfig

# Diagnosing and monitoring your own model.
from gradjax.diagnose import Report as Report
from gradjax.diagnose import Thresholds as Thresholds
from gradjax.diagnose import diagnose as diagnose
from gradjax.diagnose import diagnose_net as diagnose_net
from gradjax.errors import GradjaxInputError as GradjaxInputError

# Measurements on one network: gradients, Jacobians, spectra, forward signal.
from gradjax.gradients import GradientNorms as GradientNorms
from gradjax.gradients import LayerGradients as LayerGradients
from gradjax.gradients import cross_entropy_loss as cross_entropy_loss
from gradjax.gradients import gradient_norms as gradient_norms
from gradjax.gradients import layer_gradient_norms as layer_gradient_norms
from gradjax.gradients import layer_gradients as layer_gradients
from gradjax.gradients import mse_loss as mse_loss
from gradjax.jacobians import ChainRuleCheck as ChainRuleCheck
from gradjax.jacobians import LayerJacobians as LayerJacobians
from gradjax.jacobians import chain_rule_check as chain_rule_check
from gradjax.jacobians import io_jacobian as io_jacobian
from gradjax.jacobians import layer_jacobians as layer_jacobians
from gradjax.lyapunov import LyapunovSpectrum as LyapunovSpectrum
from gradjax.lyapunov import lyapunov_spectrum as lyapunov_spectrum
from gradjax.matrix_free import chi1_probe as chi1_probe
from gradjax.matrix_free import empirical_chi1 as empirical_chi1
from gradjax.matrix_free import layer_spectrum_estimates as layer_spectrum_estimates
from gradjax.matrix_free import matrix_free_probe as matrix_free_probe
from gradjax.models import Net as Net
from gradjax.models import build as build
from gradjax.models import from_nnx as from_nnx
from gradjax.monitor import NormHistory as NormHistory
from gradjax.monitor import latest_norms as latest_norms
from gradjax.monitor import module_group_norms as module_group_norms
from gradjax.monitor import monitor as monitor

# Training with mitigations.
from gradjax.optim import mitigation_chain as mitigation_chain

# Sweeps over seeds and scales.
from gradjax.probes import Probe as Probe
from gradjax.signal import ForwardStats as ForwardStats
from gradjax.signal import forward_statistics as forward_statistics
from gradjax.spectra import SpectrumSummary as SpectrumSummary
from gradjax.spectra import singular_values as singular_values
from gradjax.spectra import spectrum_summary as spectrum_summary
from gradjax.spectra import summarize_spectrum as summarize_spectrum
from gradjax.sweep import SweepResult as SweepResult
from gradjax.sweep import sweep as sweep

# Mean-field theory.
from gradjax.theory import CriticalLine as CriticalLine
from gradjax.theory import FixedPoint as FixedPoint
from gradjax.theory import MeanField as MeanField
from gradjax.theory import critical_line as critical_line
from gradjax.theory import mean_field as mean_field
from gradjax.theory import predicted_gradient_growth as predicted_gradient_growth
from gradjax.theory import q_fixed_point as q_fixed_point
from gradjax.train import TrainHistory as TrainHistory
from gradjax.train import TrainResult as TrainResult
from gradjax.train import train as train
from gradjax.train import train_step as train_step

try:
    __version__ = _version("gradjax")
except _PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"

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
