"""Exceptions that the command line turns into exit codes.

`InputError` is the user's fault (bad file, impossible geometry, NaN in the data): the CLI
prints its message as one sentence and exits with code 2, writing nothing. Any other
exception is an internal error (exit code 1).
"""


class InputError(Exception):
    """Bad input or usage. The message is one sentence naming the file and the problem."""


class DivergenceError(InputError):
    """A solver or sampler produced NaN/Inf or an exploding data residual."""


def about_file(path, exc: InputError) -> InputError:
    """``exc`` with its message prefixed by ``path`` (unless it already names the file), keeping
    its class, so that a message raised deep down (an operator's geometry check, say) still
    names the file the bad value came from."""
    text = str(exc)
    if str(path) in text:
        return exc
    text = text[:1].lower() + text[1:] if text[:2] != text[:2].upper() else text
    return type(exc)(f"{path}: {text}")


class naming:
    """Context manager: InputErrors raised inside get ``path`` prefixed (see :func:`about_file`).

    ``with naming(path): build_operator(...)``
    """

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is not None and isinstance(exc, InputError):
            renamed = about_file(self.path, exc)
            if renamed is not exc:
                raise renamed from None
        return False
