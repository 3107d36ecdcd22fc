"""The ``gradjax`` subcommands, one module each (see :mod:`gradjax.commands.cli`)."""
