"""The configuration of gradjax's networks, and the grids of scales that sweeps take.

Configurations are frozen and validated; they hold no arrays, so they are hashable and static.
The module imports no JAX (the command line reads its tables for ``--help``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from gradjax.utils.errors import check_choice, check_int, check_real, invalid

if TYPE_CHECKING:
    from gradjax.meanfield.activations import ActivationLike

INIT_KINDS = ("gaussian", "normal", "orthogonal", "glorot", "he", "lecun", "critical")
NORM_KINDS = (None, "batch", "layer")
RESIDUAL_KINDS = (None, "plain", "scaled", "skipinit")
RESIDUAL_BLOCKS = ("pre", "post", "act_branch")
DTYPES = ("float32", "float64")


@dataclasses.dataclass(frozen=True)
class NetConfig:
    """A deep fully connected network, the object of every gradjax experiment.

    Without ``residual``, block ``l`` maps ``a_{l-1}`` to ``a_l``::

        z_l = W_l a_{l-1} + b_l        (pre-activation)
        u_l = Norm(z_l)                (BatchNorm / LayerNorm, if ``norm``; else u_l = z_l)
        a_l = phi(u_l)

    With ``residual``, blocks 2..depth add a branch ``F`` with gain ``g`` (1, alpha, or a
    learnable gain from 0) to their input, in the form ``residual_block`` names:

        pre          a_l = a_{l-1} + g F(a_{l-1}),       F = W phi(Norm(a)) + b
        post         a_l = phi(a_{l-1} + g F(a_{l-1})),  F = Norm(W a + b)
        act_branch   a_l = a_{l-1} + g phi(Norm(W a + b))

    ``pre`` is the pre-activation block of He et al. (2016b), whose branch ends in a linear
    map; its stack starts with a linear stem ``a_1 = W_1 x + b_1``. ``post`` is the original
    ResNet block (ReLU after the addition) that the source article writes down. With
    ``branch_layers=2`` the branch has two weight layers: ``W2 phi(Norm(W phi(Norm(a)) + b))
    + b2`` (pre) and ``Norm(W2 phi(Norm(W a + b)) + b2)`` (post). The first block maps
    ``input_dim -> width`` and is never residual; blocks 2..depth are ``width -> width``; a
    linear readout maps ``width -> out_dim``.

    Attributes:
      depth: number of blocks (>= 1).
      width: hidden width N (>= 1).
      input_dim: input size; ``None`` (the default) means ``width``, so every layer
        Jacobian is square. After construction it always holds the resolved size.
      out_dim: output size of the linear readout.
      activation: a name from the activation table or an elementwise callable.
      init: weight initialisation: ``gaussian`` (N(0, sigma_w^2/fan_in)), ``normal``
        (naive N(0, sigma_w^2), no fan-in scaling), ``orthogonal`` (gain sigma_w), ``glorot``,
        ``he``, ``lecun`` (sigma_w is then an extra gain on top of the scheme's own scale), or
        ``critical`` (Gaussian at the sigma_w that makes chi_1 = 1, from mean-field theory).
      sigma_w: weight scale (see ``init``); >= 0.
      sigma_b: bias standard deviation; biases are N(0, sigma_b^2); >= 0.
      norm: ``None``, ``"batch"`` or ``"layer"``, applied between matmul and activation.
      norm_affine: whether the norm has a learnable scale and shift (1 and 0 at init).
      norm_eps: the variance floor of the norm.
      residual: ``None``, ``"plain"`` (x + F(x)), ``"scaled"`` (x + alpha F(x)) or
        ``"skipinit"`` (x + g F(x), learnable g initialised at 0; ReZero/SkipInit).
      residual_alpha: alpha of ``"scaled"`` blocks; defaults to 1/sqrt(depth).
      residual_block: ``"pre"``, ``"post"`` or ``"act_branch"`` (see above); only with
        ``residual``.
      branch_layers: weight layers per residual branch, 1 or 2 (2 for ``pre``/``post``).
      dtype: ``"float32"`` or ``"float64"`` (needs ``jax_enable_x64``).
    """

    depth: int
    width: int
    input_dim: int | None = None
    out_dim: int = 1
    activation: ActivationLike = "tanh"
    init: str = "gaussian"
    sigma_w: float = 1.0
    sigma_b: float = 0.0
    norm: str | None = None
    norm_affine: bool = True
    norm_eps: float = 1e-5
    residual: str | None = None
    residual_alpha: float | None = None
    residual_block: str = "pre"
    branch_layers: int = 1
    dtype: str = "float32"
    # Whether input_dim was left to follow width: replace(width=...) then moves it along.
    _input_dim_follows_width: bool = dataclasses.field(
        default=False, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        check_int("depth", self.depth, minimum=1)
        check_int("width", self.width, minimum=1)
        if self.input_dim is None:
            # Frozen: resolve through object.__setattr__, as dataclasses itself does.
            object.__setattr__(self, "input_dim", self.width)
            object.__setattr__(self, "_input_dim_follows_width", True)
        check_int("input_dim", self.input_dim, minimum=1)
        check_int("out_dim", self.out_dim, minimum=1)
        # Imported here: the config (and the command line's --help) needs no JAX until used.
        from gradjax.meanfield.activations import get_activation

        get_activation(self.activation)
        check_choice("init", self.init, INIT_KINDS)
        check_real("sigma_w", self.sigma_w, minimum=0.0)
        check_real("sigma_b", self.sigma_b, minimum=0.0)
        check_choice("norm", self.norm, NORM_KINDS)
        if not isinstance(self.norm_affine, bool):
            raise invalid("norm_affine", self.norm_affine, "True or False")
        check_real("norm_eps", self.norm_eps, strictly_positive=True)
        check_choice("residual", self.residual, RESIDUAL_KINDS)
        if self.residual_alpha is not None:
            check_real("residual_alpha", self.residual_alpha, minimum=0.0)
            if self.residual != "scaled":
                raise invalid(
                    "residual_alpha", self.residual_alpha, "None unless residual='scaled'"
                )
        check_choice("residual_block", self.residual_block, RESIDUAL_BLOCKS)
        if self.residual is None and self.residual_block != "pre":
            raise invalid(
                "residual_block", self.residual_block, "'pre' (the default) unless residual is set"
            )
        check_int("branch_layers", self.branch_layers, minimum=1, maximum=2)
        if self.branch_layers == 2 and (
            self.residual is None or self.residual_block == "act_branch"
        ):
            raise invalid(
                "branch_layers",
                self.branch_layers,
                "1 unless residual is set and residual_block is 'pre' or 'post'",
            )
        check_choice("dtype", self.dtype, DTYPES)

    @property
    def alpha(self) -> float:
        """The fixed residual branch gain: 1 (plain), alpha (scaled); 0 when not residual."""
        if self.residual == "plain":
            return 1.0
        if self.residual == "scaled":
            a = self.residual_alpha
            return 1.0 / math.sqrt(self.depth) if a is None else float(a)
        return 0.0

    def replace(self, **changes) -> NetConfig:
        """Returns a copy with ``changes`` applied (and validated).

        An ``input_dim`` that was left to default keeps following ``width``.
        """
        if self._input_dim_follows_width and "input_dim" not in changes:
            changes["input_dim"] = None
        return dataclasses.replace(self, **changes)


def parse_range(field: str, text: str) -> np.ndarray:
    """Parses ``"start:stop:count"`` (inclusive linspace) or a comma list ``"a,b,c"``.

    Args:
      field: the option's name, used in error messages.
      text: the range text.

    Returns:
      A float64 NumPy array of the values.

    Raises:
      GradjaxInputError: if the text is malformed, has non-finite values or no points.
    """
    allowed = "'start:stop:count' with count >= 1, or a comma-separated list of numbers"
    text = str(text).strip()
    try:
        if ":" in text:
            parts = text.split(":")
            if len(parts) != 3:
                raise ValueError
            start, stop, count = float(parts[0]), float(parts[1]), int(parts[2])
            if count < 1:
                raise ValueError
            values = np.linspace(start, stop, count)
        else:
            values = np.array([float(p) for p in text.split(",") if p.strip()], dtype=np.float64)
    except ValueError:
        raise invalid(field, text, allowed) from None
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise invalid(field, text, allowed)
    return values


def as_grid(field: str, values: float | Sequence[float] | np.ndarray) -> np.ndarray:
    """Validates a grid of non-negative finite scales and returns it as a 1-D float64 array."""
    arr = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if arr.ndim != 1 or arr.size == 0:
        raise invalid(field, values, "a non-empty 1-D list of numbers >= 0")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise invalid(field, values, "finite numbers >= 0")
    return arr
