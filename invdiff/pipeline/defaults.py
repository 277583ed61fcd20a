"""What `reconstruct` uses when the user names no prior or solver.

The shipped priors live in <repo>/data/priors/; each operator gets the one trained on its kind
of images when it is shipped, else the brain-MRI default. The default solver per operator is
the best quality per second on the benchmark (BENCHMARKS.md); its tuned step count and
guidance live with the solver (invdiff/solvers/*: ``Solver.defaults``).
"""

from __future__ import annotations

from pathlib import Path

from invdiff.errors import InputError

PRIORS_DIR = Path(__file__).resolve().parent.parent.parent / "data" / "priors"
DEFAULT_PRIOR = "brain128"
PRIOR_FOR_OPERATOR = {"radon": "ct128", "blur": "microscopy128"}
DEFAULT_SOLVER = "diffpir"
SOLVER_FOR_OPERATOR: dict[str, str] = {}


def default_prior_for(operator_name: str) -> Path:
    """The shipped prior directory for an operator (InputError if none is shipped)."""
    for name in (PRIOR_FOR_OPERATOR.get(operator_name), DEFAULT_PRIOR):
        if name and (PRIORS_DIR / name / "config.json").exists():
            return PRIORS_DIR / name
    raise InputError(f"no --prior given and no default prior is shipped in {PRIORS_DIR}.")


def default_solver_for(operator_name: str) -> str:
    return SOLVER_FOR_OPERATOR.get(operator_name, DEFAULT_SOLVER)
