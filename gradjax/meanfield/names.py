"""The names of gradjax's activation table, importable without JAX.

The command line lists them in ``--help`` before JAX is loaded;
:data:`gradjax.meanfield.activations.ACTIVATIONS` holds the functions under exactly these names,
in this order (a test checks it).
"""

ACTIVATION_NAMES = (
    "sigmoid",
    "tanh",
    "relu",
    "leaky_relu",
    "elu",
    "selu",
    "gelu",
    "swish",
    "erf",
    "linear",
)
