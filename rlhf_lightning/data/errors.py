"""Errors for bad input: a data row (always says which file, which row and which field) or a setting that
cannot work (names the option)."""

from __future__ import annotations

from typing import NamedTuple


class DataFormatError(ValueError):
    """A row of an input file cannot be used. The message names the file, the row and the field."""

    def __init__(self, source: str, row: int | None, field: str | None, problem: str) -> None:
        where = source
        if row is not None:
            where += f", row {row}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {problem}")
        self.source, self.row, self.field, self.problem = source, row, field, problem


class OptionError(ValueError):
    """A setting that cannot work; the message names the option and the value."""


class RowLocation(NamedTuple):
    """Where a row came from: its file and its row number (counted from 1)."""

    source: str
    row: int

    def error(self, field: str | None, problem: str) -> DataFormatError:
        return DataFormatError(self.source, self.row, field, problem)


def type_name(value: object) -> str:
    """A value's JSON-ish type name for messages: ``null``, ``str``, ``list``, ..."""
    return "null" if value is None else type(value).__name__
