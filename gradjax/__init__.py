"""gradjax: measure, explain and fix vanishing and exploding gradients in deep networks.

Example:
  >>> import jax, gradjax as gj
  >>> net = gj.build(gj.NetConfig(depth=32, width=128, activation="tanh", sigma_w=1.0))
  >>> res = gj.sweep(net, gj.probes.gradient_probe(net), seeds=4, sigma_w=[0.5, 1.0, 2.0])
"""

from importlib.metadata import PackageNotFoundError, version

from gradjax import data as data
from gradjax import distributed as distributed
from gradjax import probes as probes
from gradjax.activations import ACTIVATIONS as ACTIVATIONS
from gradjax.activations import Activation as Activation
from gradjax.activations import activation_names as activation_names
from gradjax.activations import derivative as derivative
from gradjax.activations import get_activation as get_activation
from gradjax.config import NetConfig as NetConfig
from gradjax.config import TrainConfig as TrainConfig
from gradjax.config import parse_range as parse_range
from gradjax.data import Dataset as Dataset
from gradjax.diagnose import Report as Report
from gradjax.diagnose import Thresholds as Thresholds
from gradjax.diagnose import diagnose as diagnose
from gradjax.diagnose import diagnose_net as diagnose_net
from gradjax.errors import GradjaxInputError as GradjaxInputError
from gradjax.gradients import GradientNorms as GradientNorms
from gradjax.gradients import LayerGradients as LayerGradients
from gradjax.gradients import cross_entropy_loss as cross_entropy_loss
from gradjax.gradients import gradient_norms as gradient_norms
from gradjax.gradients import layer_gradient_norms as layer_gradient_norms
from gradjax.gradients import layer_gradients as layer_gradients
from gradjax.gradients import mse_loss as mse_loss
from gradjax.initializers import base_weight as base_weight
from gradjax.initializers import haar_orthogonal as haar_orthogonal
from gradjax.initializers import init_weight as init_weight
from gradjax.initializers import scheme_factor as scheme_factor
from gradjax.isometry import CriticalPoint as CriticalPoint
from gradjax.isometry import DerivativeMoments as DerivativeMoments
from gradjax.isometry import IsometryPrediction as IsometryPrediction
from gradjax.isometry import JacobianSpectra as JacobianSpectra
from gradjax.isometry import SpectrumMoments as SpectrumMoments
from gradjax.isometry import critical_net as critical_net
from gradjax.isometry import critical_point as critical_point
from gradjax.isometry import derivative_moments as derivative_moments
from gradjax.isometry import fuss_catalan_density as fuss_catalan_density
from gradjax.isometry import fuss_catalan_edge as fuss_catalan_edge
from gradjax.isometry import fuss_catalan_moment as fuss_catalan_moment
from gradjax.isometry import isometry_input as isometry_input
from gradjax.isometry import isometry_prediction as isometry_prediction
from gradjax.isometry import jacobian_spectra as jacobian_spectra
from gradjax.isometry import spectrum_moments as spectrum_moments
from gradjax.jacobians import ChainRuleCheck as ChainRuleCheck
from gradjax.jacobians import LayerJacobians as LayerJacobians
from gradjax.jacobians import batch_layer_jacobians as batch_layer_jacobians
from gradjax.jacobians import chain_product as chain_product
from gradjax.jacobians import (
    chain_rule_activation_gradients as chain_rule_activation_gradients,
)
from gradjax.jacobians import chain_rule_check as chain_rule_check
from gradjax.jacobians import chain_rule_weight_gradients as chain_rule_weight_gradients
from gradjax.jacobians import expected_factors as expected_factors
from gradjax.jacobians import io_jacobian as io_jacobian
from gradjax.jacobians import jacobian as jacobian
from gradjax.jacobians import layer_jacobians as layer_jacobians
from gradjax.lyapunov import GaussianExponents as GaussianExponents
from gradjax.lyapunov import LyapunovSpectrum as LyapunovSpectrum
from gradjax.lyapunov import gaussian_product_exponents as gaussian_product_exponents
from gradjax.lyapunov import lyapunov_spectrum as lyapunov_spectrum
from gradjax.lyapunov import matrix_lyapunov_spectrum as matrix_lyapunov_spectrum
from gradjax.matrix_free import EmpiricalChi1 as EmpiricalChi1
from gradjax.matrix_free import MatrixFreeSummary as MatrixFreeSummary
from gradjax.matrix_free import TopSingularValue as TopSingularValue
from gradjax.matrix_free import TraceEstimate as TraceEstimate
from gradjax.matrix_free import chi1_probe as chi1_probe
from gradjax.matrix_free import empirical_chi1 as empirical_chi1
from gradjax.matrix_free import hutchinson_mean_sq as hutchinson_mean_sq
from gradjax.matrix_free import lanczos_sigma_max as lanczos_sigma_max
from gradjax.matrix_free import layer_spectrum_estimates as layer_spectrum_estimates
from gradjax.matrix_free import matrix_free_probe as matrix_free_probe
from gradjax.models import ForwardTrace as ForwardTrace
from gradjax.models import Net as Net
from gradjax.models import build as build
from gradjax.models import from_nnx as from_nnx
from gradjax.monitor import NormHistory as NormHistory
from gradjax.monitor import latest_norms as latest_norms
from gradjax.monitor import module_group_norms as module_group_norms
from gradjax.monitor import monitor as monitor
from gradjax.monitor import plot_norm_history as plot_norm_history
from gradjax.normalization import GrowthFit as GrowthFit
from gradjax.normalization import NormGrowth as NormGrowth
from gradjax.normalization import NormStatistics as NormStatistics
from gradjax.normalization import RateTable as RateTable
from gradjax.normalization import ScaleInvariance as ScaleInvariance
from gradjax.normalization import bn_gradient_rate as bn_gradient_rate
from gradjax.normalization import fit_layer_growth as fit_layer_growth
from gradjax.normalization import ln_gradient_rate as ln_gradient_rate
from gradjax.normalization import norm_gradient_growth as norm_gradient_growth
from gradjax.normalization import norm_statistics as norm_statistics
from gradjax.normalization import rate_table as rate_table
from gradjax.normalization import scale_block as scale_block
from gradjax.normalization import scale_invariance as scale_invariance
from gradjax.optim import GradientNormState as GradientNormState
from gradjax.optim import add_l1_penalty as add_l1_penalty
from gradjax.optim import clip_by_global_norm as clip_by_global_norm
from gradjax.optim import group_norms as group_norms
from gradjax.optim import mitigation_chain as mitigation_chain
from gradjax.optim import record_gradient_norms as record_gradient_norms
from gradjax.optim import set_hyperparams as set_hyperparams
from gradjax.optim import warmup_cosine as warmup_cosine
from gradjax.residual import IdentityPath as IdentityPath
from gradjax.residual import ResidualProfile as ResidualProfile
from gradjax.residual import ResidualTheory as ResidualTheory
from gradjax.residual import branch_path_sum as branch_path_sum
from gradjax.residual import gain_profile as gain_profile
from gradjax.residual import identity_path as identity_path
from gradjax.residual import linear_residual_variance as linear_residual_variance
from gradjax.residual import residual_profile as residual_profile
from gradjax.residual import residual_theory as residual_theory
from gradjax.signal import ForwardStats as ForwardStats
from gradjax.signal import forward_statistics as forward_statistics
from gradjax.spectra import SpectrumSummary as SpectrumSummary
from gradjax.spectra import singular_values as singular_values
from gradjax.spectra import spectrum_summary as spectrum_summary
from gradjax.spectra import summarize_spectrum as summarize_spectrum
from gradjax.sweep import SweepResult as SweepResult
from gradjax.sweep import accepts_lazy_scales as accepts_lazy_scales
from gradjax.sweep import sweep as sweep
from gradjax.theory import CriticalLine as CriticalLine
from gradjax.theory import FixedPoint as FixedPoint
from gradjax.theory import MeanField as MeanField
from gradjax.theory import c_map as c_map
from gradjax.theory import critical_line as critical_line
from gradjax.theory import critical_sigma_w2 as critical_sigma_w2
from gradjax.theory import gradient_factor as gradient_factor
from gradjax.theory import mean_field as mean_field
from gradjax.theory import mean_field_grid as mean_field_grid
from gradjax.theory import predicted_gradient_growth as predicted_gradient_growth
from gradjax.theory import q_fixed_point as q_fixed_point
from gradjax.theory import q_map as q_map
from gradjax.train import TrainHistory as TrainHistory
from gradjax.train import TrainResult as TrainResult
from gradjax.train import seed_quantiles as seed_quantiles
from gradjax.train import train as train_runs  # noqa: F401 (gj.train is the module)
from gradjax.train import train_step as train_step

try:
    __version__ = version("gradjax")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"

__all__ = [name for name in dir() if not name.startswith("_")]
