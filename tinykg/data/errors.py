"""The one exception the data layer raises for bad input files."""

from __future__ import annotations

import os

__all__ = ["DataError"]


class DataError(Exception):
    """A data file is missing, unreadable, malformed or inconsistent.

    ``str(error)`` is always a single line of the form ``path:line: reason`` (or ``path: reason``
    when no line applies, or just ``reason``), e.g. ``kg_final.txt:17: expected 3 integer columns,
    got 2``. The parts stay available as ``path``, ``line`` (1-based) and ``reason``.
    """

    def __init__(self, reason: str, path: str | os.PathLike | None = None, line: int | None = None):
        self.reason = " ".join(str(reason).split())
        self.path = None if path is None else os.fspath(path)
        self.line = None if line is None else int(line)
        super().__init__(self._render())

    def _render(self) -> str:
        if self.path is None:
            return self.reason
        # A newline in a file name would break the one-line promise, other control characters
        # (NUL, escape sequences) would garble the terminal: show them escaped.
        location = "".join(char if char.isprintable() else ascii(char)[1:-1] for char in self.path)
        if self.line is not None:
            location = f"{location}:{self.line}"
        return f"{location}: {self.reason}"
