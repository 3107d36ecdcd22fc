"""``python -m gradjax``: the same command line as ``gradjax``."""

import sys

from gradjax.commands.cli import main

if __name__ == "__main__":
    sys.exit(main())
