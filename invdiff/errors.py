"""Exceptions that the command line turns into exit codes.

`InputError` is the user's fault (bad file, impossible geometry, NaN in the data): the CLI
prints its message as one sentence and exits with code 2, writing nothing. Any other
exception is an internal error (exit code 1).
"""


class InputError(Exception):
    """Bad input or usage. The message is one sentence naming the file and the problem."""


class DivergenceError(InputError):
    """A solver or sampler produced NaN/Inf or an exploding data residual."""
