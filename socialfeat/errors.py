"""socialfeat's own errors: expected failures that a person can act on.

The CLI prints these as one line (``socialfeat: error: ...``) and exits 2 for a
usage problem, 1 otherwise; anything else (a shape error, a bug) keeps its
traceback. Subclasses also derive from the builtin they replace where callers
may catch that (``ValueError``, ``FileNotFoundError``, ``RuntimeError``).
"""

from __future__ import annotations


class SocialfeatError(Exception):
    """Base class: the message alone tells what failed and what to do."""


class UsageError(SocialfeatError, ValueError):
    """A bad option or input file given by the user (CLI exit status 2)."""


class InputNotFoundError(UsageError, FileNotFoundError):
    """An input path that does not exist."""


class OutputExistsError(UsageError, FileExistsError):
    """An output that would replace earlier work (a run folder, a fitted head) without --overwrite,
    or a file the command did not write (a video, the features file itself): never replaced."""


class OutputNotWritableError(UsageError, PermissionError):
    """An output whose folder cannot be made or written (permissions, a read-only file system, a
    file in the way): found before any work, not after the model loaded."""


class OutputBusyError(UsageError, BlockingIOError):
    """An output that another process is writing now (two runs given the same ``-o``)."""


class MissingDependencyError(SocialfeatError, RuntimeError):
    """An optional extra (Ray, Silero VAD, OpenCV) is needed but not installed."""


class DeviceError(UsageError, RuntimeError):
    """A requested device that this machine does not have."""


class UnknownModelError(UsageError):
    """A model or architecture name that the registry does not know."""


def one_line(text: str) -> str:
    """``text`` with line breaks and tabs escaped, for a message that must stay one line on a
    terminal or in a log (a file name may contain a newline)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") \
        if any(c in text for c in "\n\r\t") else text
