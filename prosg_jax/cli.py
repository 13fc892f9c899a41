"""Shared ``main`` plumbing of ``train.py`` and ``eval.py``: user errors are one line.

A problem the user can fix (a bad ``--config.`` override, a missing file, a
config that contradicts the workdir, a NaN loss) is printed as a single
``<script>: error: ...`` line on stderr with exit status 1 (2 for the command
line); set ``PROSG_TRACEBACK=1`` to see the traceback instead. Anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

from prosg_jax.checkpoint import CheckpointError
from prosg_jax.errors import UserError

# Exceptions that describe the user's input rather than a bug in the code.
USER_ERRORS = (UserError, CheckpointError, FileNotFoundError, PermissionError)


def _one_line(e: BaseException) -> str:
    """The innermost message of an exception chain, on one line."""
    while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
        e = e.__cause__ or e.__context__
    text = str(e).strip().strip('"').replace("\n", " ")
    if isinstance(e, AttributeError | KeyError):
        return f"unknown config field {text}"
    return text or type(e).__name__


def _fail(prog: str, message: str, status: int) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def _parse_flags(argv):
    prog = os.path.basename(argv[0])
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # absl/ml_collections raise many types for bad flags
        if os.environ.get("PROSG_TRACEBACK"):
            raise
        _fail(prog, f"invalid command line: {_one_line(e)}", 2)


def run(main) -> None:
    """``absl.app.run(main)`` with one-line errors for flags and :data:`USER_ERRORS`."""

    def wrapped(argv):
        prog = os.path.basename(argv[0])
        if len(argv) > 1:
            _fail(prog, f"unexpected arguments: {argv[1:]}", 2)
        if not flags.FLAGS["verbosity"].present:
            # Orbax and tfds log every file they touch at INFO; keep the console readable.
            logging.set_verbosity(logging.WARNING)
        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()  # dataset generation is quick; keep one bar, ours
        try:
            main(argv)
        except USER_ERRORS as e:
            if os.environ.get("PROSG_TRACEBACK"):
                raise
            _fail(prog, str(e).replace("\n", " "), 1)

    app.run(wrapped, flags_parser=_parse_flags)
