"""Shared ``main`` plumbing of ``train.py`` and ``eval.py``: user errors are one line.

A problem the user can fix (a bad ``--config.`` override, a missing file, a
config that contradicts the workdir, a NaN loss) is printed as a single
``<script>: error: ...`` line on stderr with exit status 1 (2 for the command
line); set ``PROSG_TRACEBACK=1`` to see the traceback instead. Anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

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


REPO = Path(__file__).resolve().parents[1]
# Both scripts' default --config (the README's main job), found from any directory.
DEFAULT_CONFIG = str(REPO / "configs" / "default.py")

_CONFIG_HELP = flags.DEFINE_bool(
    "config_help", False, "List every --config.<field> with its value and comment, then exit."
)


def _resolve_config_path(prog: str, argv: list[str]) -> list[str]:
    """``--config PATH`` found from the current directory or else the repository's root.

    The scripts' default and the README name configs relative to the
    repository, so they keep working when a script is started elsewhere.
    """
    out = list(argv)
    for i, arg in enumerate(out):
        if arg in ("--config", "-config") and i + 1 < len(out):
            at, path = i + 1, out[i + 1]
        elif arg.startswith(("--config=", "-config=")):
            at, path = i, arg.split("=", 1)[1]
        else:
            continue
        file = path.split(":", 1)[0]  # config_flags allows "file.py:arg"
        if Path(file).is_file():
            continue
        if not Path(file).is_absolute() and (REPO / file).is_file():
            fixed = str(REPO / path)
            out[at] = fixed if at != i else f"--config={fixed}"
            continue
        _fail(prog, f"--config {file}: no such config file (see {REPO / 'configs'})", 2)
    return out


def _parse_flags(argv):
    prog = os.path.basename(argv[0])
    try:
        return flags.FLAGS(_resolve_config_path(prog, argv))
    except Exception as e:  # absl/ml_collections raise many types for bad flags
        if os.environ.get("PROSG_TRACEBACK"):
            raise
        if isinstance(e, flags.Error) and str(e).startswith("flag --"):
            _fail(prog, str(e).replace("\n", " "), 2)  # names the flag and its value
        _fail(prog, f"invalid command line: {_one_line(e)}", 2)


_ASSIGN = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*=\s*[^#]*?(?:#\s*(.*))?$")


def _comments(files: list[Path]) -> dict[str, str]:
    """``dotted name -> comment`` of the assignments in config files (first file wins).

    An assignment's comment is the one on its line, or else the comment lines
    right above it.
    """
    found: dict[str, str] = {}
    for file in files:
        above: list[str] = []
        for line in file.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith("#"):
                above.append(stripped.lstrip("# ").strip())
                continue
            m = _ASSIGN.match(line)
            comment = (m.group(2) or " ".join(above)).strip() if m else ""
            if comment:
                found.setdefault(m.group(1).removeprefix("config."), comment)
            above = []
    return found


def config_help(config, config_file: str) -> str:
    """Every field of ``config``: ``--config.<field>=<value>`` and its comment."""
    from prosg_jax.config_check import leaves

    main = Path(config_file.split(":", 1)[0])
    comments = _comments([main, *sorted(p for p in main.parent.glob("*.py") if p != main)])
    lines = [f"Fields of {main} (override any with --config.<field>=<value>):", ""]
    for path, value in leaves(config):
        # a field set in a loop (stage.steps) is found by its last part
        last = path.rsplit(".", 1)[-1]
        loop = (c for n, c in comments.items() if n.count(".") == 1 and n.endswith("." + last))
        note = comments.get(path) or next(loop, "")
        lines.append(f"--config.{path}={value!r}" + (f"\n    {note}" if note else ""))
    return "\n".join(lines)


def run(main, config) -> None:
    """``absl.app.run(main)`` with one-line errors for flags and :data:`USER_ERRORS`.

    ``config`` is the script's ``config_flags`` holder, listed by ``--config_help``.
    """

    def wrapped(argv):
        prog = os.path.basename(argv[0])
        if len(argv) > 1:
            _fail(prog, f"unexpected arguments: {argv[1:]}", 2)
        if _CONFIG_HELP.value:
            print(config_help(config.value, flags.FLAGS["config"].config_filename))
            return
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
