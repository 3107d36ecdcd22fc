"""The model boundary: a user's Flax Linen or NNX model, or a pure function, seen one way.

Every entry point that takes a user's model (:func:`gradjax.diagnose`, :func:`gradjax.train`,
sweeps through :func:`sweepable`, the ``--model`` option of the command line) goes through
:func:`wrap` (:mod:`gradjax.boundary.kinds`, the one place that tells the kinds apart), which
returns a :class:`Boundary` (:mod:`gradjax.boundary`): the differentiable parameters, the
other state, a forward pass with a zero probe added to every block output, and the blocks in
execution order. :mod:`gradjax.boundary.linen`, :mod:`gradjax.boundary.nnx` and
:mod:`gradjax.boundary.function` observe each kind of model without changing its code;
:mod:`gradjax.boundary.scaling` puts a model in the sweep engine's protocol and
:mod:`gradjax.boundary.trainable` in the training loop's.
"""

from gradjax.boundary.core import PROBE as PROBE
from gradjax.boundary.core import Block as Block
from gradjax.boundary.core import Boundary as Boundary
from gradjax.boundary.core import Site as Site
from gradjax.boundary.core import choose_blocks as choose_blocks
from gradjax.boundary.function import first_use as first_use
from gradjax.boundary.kinds import wrap as wrap
from gradjax.boundary.scaling import ModelConfig as ModelConfig
from gradjax.boundary.scaling import Sweepable as Sweepable
from gradjax.boundary.scaling import sweepable as sweepable
