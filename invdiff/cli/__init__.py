"""The ``invdiff`` command line: one Typer app, one small module per subcommand.

The package layout differs from DESIGN.md's single ``cli.py`` on purpose: each subcommand
lives in its own file (simulate.py, reconstruct.py, ...) so that each stays small; this file
only assembles them and maps errors to exit codes (0 ok, 2 bad input, 1 internal error).
"""

from __future__ import annotations

import sys

from invdiff.cli.app import app
from invdiff.cli.common import run_app

# Each import registers its command on ``app``.
from invdiff.cli import simulate, reconstruct, evaluate, calibrate, info, train, sample, likelihood  # noqa: F401,E402


def main() -> None:
    sys.exit(run_app(app))
