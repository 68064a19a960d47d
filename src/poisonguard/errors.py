"""Exceptions the CLI turns into exit codes, and the exit codes themselves (DESIGN.md)."""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

EXIT_OK = 0          # ran, nothing found
EXIT_FINDING = 1     # a finding: backdoor, poisoned data, unsafe file
EXIT_USER_ERROR = 2  # the user's mistake
EXIT_INCOMPLETE = 3  # a stage, method or model could not be checked, and nothing was found
EXIT_INTERNAL = 4    # poisonguard itself failed (a bug): never read as a verdict


class UserError(ValueError):
    """A user's mistake: the CLI prints its message on one line and exits with code 2."""


class UnsafeFileError(Exception):
    """A model or data file that would run code (or otherwise attack the reader) when loaded.

    Not a user error but a finding: the CLI reports `file_safety: unsafe` with the findings
    and exits with code 1, as for a backdoor found. Nothing in the file was executed.
    """

    def __init__(self, path: str, findings: Sequence[str]) -> None:
        self.path = str(path)
        self.findings = list(findings)
        shown = "; ".join(self.findings[:3]) + (f" (+{len(self.findings) - 3} more)" if len(self.findings) > 3 else "")
        super().__init__(f"refused {self.path}: unsafe file, it would run code or attack the reader when loaded: {shown}")


@contextlib.contextmanager
def user_values() -> Iterator[None]:
    """Around a constructor fed from the command line: its hyperparameter check's ValueError
    is the user's mistake, so it becomes a UserError (one line, exit 2).

    Only constructor calls are wrapped: a ValueError from deeper inside a run is a bug and
    keeps its traceback.
    """
    try:
        yield
    except UserError:
        raise
    except ValueError as exc:
        raise UserError(str(exc)) from exc
