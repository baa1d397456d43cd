"""The one error boundary of md4's commands: a user's error is one message.

An error the user can fix (a flag, a config field, the data, the workdir, a
full disk, a diverged run) ends the command with `md4 error: <what is wrong
and how to fix it>` on stderr and exit status 1, without a traceback;
`--verbosity=1` (or `-v 1`) prints the traceback above it. Any other
exception is a bug in md4 and keeps its traceback.

    if __name__ == "__main__":
      error_boundary.run_app(main)           # absl commands, flag parsing too

    def main(argv=None):                     # other scripts (argparse)
      with error_boundary.reported(argv):
        args = error_boundary.ArgumentParser(...).parse_args(argv)

`reported` also gives the same form to a `SystemExit("message")` raised
by a script, and `check_call` runs one call inside the boundary (tests use
it to see exactly what a command would print).
"""

import argparse
import contextlib
import errno
import sys
import traceback

from absl import app
from absl import flags

PREFIX = "md4 error: "


class UserError(Exception):
  """An error whose message already says what to fix (e.g. a bad flag)."""


class ArgumentParser(argparse.ArgumentParser):
  """argparse whose errors are user errors (one line, exit status 1).

  argparse itself prints its usage and exits with status 2.
  """

  def error(self, message):
    raise UserError(
        f"{message.rstrip('.')}; run with --help to list the flags."
    )


# Exception types raised for bad inputs throughout md4 (messages name the
# field and the fix). TypeError: a config field of the wrong type.
USER_ERRORS = (
    UserError,
    ValueError,
    TypeError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    FloatingPointError,
)
# OSErrors of the machine, not of md4: a full disk or quota, a read-only
# file system.
USER_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def is_user_error(error: BaseException) -> bool:
  if isinstance(error, USER_ERRORS):
    return True
  return isinstance(error, OSError) and error.errno in USER_ERRNOS


def verbosity(argv=None) -> int:
  """absl's --verbosity once parsed, else as given in argv (default 0)."""
  try:
    if flags.FLAGS.is_parsed():
      return int(flags.FLAGS.verbosity)
  except (AttributeError, flags.Error):
    pass
  argv = list(sys.argv if argv is None else argv)
  for i, arg in enumerate(argv):
    for name in ("--verbosity", "-v"):
      value = None
      if arg.startswith(name + "="):
        value = arg.split("=", 1)[1]
      elif arg == name and i + 1 < len(argv):
        value = argv[i + 1]
      if value is not None:
        try:
          return int(value)
        except ValueError:
          return 0
  return 0


def message(error: BaseException) -> str:
  """The one `md4 error: ...` message of a user error."""
  text = str(error).strip()
  if isinstance(error, OSError) and error.errno in USER_ERRNOS:
    where = f" ({error.filename})" if error.filename else ""
    fixes = {
        errno.ENOSPC: "free disk space or choose a larger disk",
        errno.EDQUOT: "free space within your quota",
        errno.EROFS: "choose a writable directory",
    }
    text = f"{error.strerror}{where}; {fixes[error.errno]}."
  if isinstance(error, KeyError) and text.startswith("'"):
    text = text.strip("'")  # KeyError quotes its message.
  text = text or type(error).__name__
  return text if text.startswith(PREFIX) else PREFIX + text


def _exit(error: BaseException, argv) -> SystemExit:
  if verbosity(argv) >= 1:
    traceback.print_exception(error, file=sys.stderr)
  sys.stderr.flush()
  return SystemExit(message(error))


@contextlib.contextmanager
def reported(argv=None):
  """Turns a user error inside the block into `SystemExit("md4 error: ...")`.

  Args:
    argv: the command line, for `--verbosity` before flags are parsed;
      default sys.argv.

  Raises:
    SystemExit: whose code is the message (Python prints it to stderr and
      exits with status 1).
  """
  try:
    yield
  except SystemExit as e:
    if isinstance(e.code, str) and e.code:
      raise _exit(e, argv) from None
    raise
  except Exception as e:  # pylint: disable=broad-except
    if not is_user_error(e):
      raise
    raise _exit(e, argv) from None


def check_call(fn, *args, argv=None, **kwargs):
  """fn(*args, **kwargs) inside the boundary."""
  with reported(argv):
    return fn(*args, **kwargs)


def _flag_parser(check_argv):
  """absl's flag parsing with its errors (and check_argv's) as user errors."""

  def parse(argv):
    if check_argv is not None:
      check_argv(argv)
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      raise UserError(f"{e}. Run with --helpshort to list the flags.") from e

  return parse


def run_app(main, check_argv=None, argv=None) -> None:
  """`absl.app.run(main)` inside the boundary, flag parsing included.

  Args:
    main: the command's main(argv); an `app.UsageError` it raises (a flag
      value it rejects) is a user error too.
    check_argv: optional `(argv) -> None` run before the flags are parsed,
      raising a user error for arguments absl would report with a
      traceback (e.g. a config file that does not load).
    argv: the command line (default sys.argv).
  """

  def checked_main(args):
    try:
      return main(args)
    except app.UsageError as e:
      # absl would print the whole flag list above the message.
      text = str(e).rstrip(".")
      if "run with" not in text:
        text += "; run with --helpshort to list the flags"
      raise UserError(text + ".") from e

  with reported():
    app.run(checked_main, argv=argv, flags_parser=_flag_parser(check_argv))
