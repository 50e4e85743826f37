"""Reading rows from local files (jsonl, json, parquet, csv), the project's shipped assets, or the hub.

Sources are strings:

- a local path ending in ``.jsonl``, ``.json``, ``.parquet`` or ``.csv``, optionally compressed
  (``.gz``, ``.bz2``, ``.xz``: ``data.jsonl.gz``);
- ``builtin:NAME`` for a file shipped in ``rlhf_lightning/data/assets`` (``builtin:demonstrations.jsonl``);
- ``hf:OWNER/NAME`` or ``hf:OWNER/NAME:SPLIT`` for a dataset on the Hugging Face hub (split ``train`` by default);
- a labelling database (``.sqlite``, ``.sqlite3``, ``.db``, written by ``rlhf-lightning generate`` and ``label``):
  its rankings as ranking rows (:func:`rlhf_lightning.data.labels.read_label_rows`), numbered by judgement id.

The JSON layouts are the ones the ``datasets`` library's json loader reads, under either suffix: JSON lines
(one object per line), one JSON list of row objects, one JSON object of equal-length column lists
(``{"prompt": [...], "completion": [...]}``), and one JSON object holding a single list of row objects
(``{"data": [...]}``, what ``datasets`` reads with ``field="data"``). A ``.json`` file is tried as one
document first, a ``.jsonl`` file as lines first. Text is UTF-8, with or without a byte-order mark.

Rows are numbered from 1 as a person counts them: the line of a jsonl file, the element of a json list or
column, the data row of a csv file (the header is not counted), the record of a parquet file or hub split.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import itertools
import json
import lzma
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import IO

from rlhf_lightning.data.errors import DataFormatError
from rlhf_lightning.data.labels import SUFFIXES as DATABASE_SUFFIXES
from rlhf_lightning.data.labels import read_label_rows

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
COMPRESSIONS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
ROW_FIELDS = {"messages", "prompt", "completion", "text", "chosen", "rejected", "responses"}
"""Fields of the project's row formats: a JSON document that is one object with these is one row."""
JSON_LAYOUTS = (
    "JSON lines (one object per line), a JSON list of row objects, a JSON object of equal-length column "
    'lists, or a JSON object holding one list of row objects ({"data": [...]})'
)


def builtin_path(name: str) -> Path:
    """Path of a data file shipped with the package."""
    path = Path(str(resources.files("rlhf_lightning.data") / "assets" / name))
    if not path.exists():
        available = sorted(p.name for p in path.parent.glob("*.jsonl"))
        raise FileNotFoundError(f"no builtin data file {name!r}; available: {', '.join(available)}")
    return path


SHIPPED_TASKS = {
    "quickstart": ("builtin:comparisons.jsonl", "builtin:demonstrations.jsonl", "builtin:prompts.jsonl",
                   "rlhf_lightning.data.synthetic:"),
    **{f"{name} development task": (f"builtin:{name}_", f"rlhf_lightning.tasks.{name}:")
       for name in ("everyday", "lists", "lengths", "tone")},
}  # fmt: skip
"""The tasks shipped with the package: the prefixes of their data files and of their functions."""


def shipped_task(source: str) -> str | None:
    """The shipped task (:data:`SHIPPED_TASKS`) that a data source (``builtin:NAME``) or a function path
    (``module:name``) belongs to; ``None`` for the user's own."""
    return next((task for task, prefixes in SHIPPED_TASKS.items() if source.startswith(prefixes)), None)


def shipped_default_warning(
    option: str, value: str, train_files: list[str], what: str, data_option: str = "train_files"
) -> str | None:
    """A warning when ``option`` names a shipped task's file or function (``value``, ``what`` it does) while the
    run's data (``train_files``, given as ``data_option``) are not that task's: the user's own, or another
    task's; ``None`` otherwise. A config copied from a shipped one keeps such a default when only its data are
    changed. Label databases (``.sqlite``) do not record which task their prompts came from, so they are not
    counted either way."""
    task = shipped_task(value)
    files = [f for f in train_files if not f.endswith(DATABASE_SUFFIXES)]
    if task is None or all(shipped_task(f) == task for f in files):
        return None
    return (
        f"{option}: {value} is the {task}'s, shipped with the package, while {data_option} {train_files} are not: "
        f"{what}. Give your own, or leave {option} out"
    )


def describe(source: str) -> str:
    return str(builtin_path(source[len("builtin:") :])) if source.startswith("builtin:") else source


def _layout(path: Path) -> tuple[str, str | None]:
    """``(format suffix, compression suffix or None)`` of a file name: ``d.jsonl.gz`` -> ``(.jsonl, .gz)``."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = suffixes.pop() if suffixes and suffixes[-1] in COMPRESSIONS else None
    return (suffixes[-1] if suffixes else ""), compression


def read_rows(source: str, label_sources: str | Sequence[str] = "auto") -> Iterator[tuple[int, object]]:
    """Yield ``(row_number, row)`` pairs. Rows are usually dicts; anything else is left to the caller to reject.
    A labelling database gives the rankings of ``label_sources``
    (:func:`rlhf_lightning.data.labels.read_label_rows`).

    Raises :class:`DataFormatError` naming the file (and the row or line where one is known) when the file
    cannot be read: a layout other than the ones listed in this module's documentation, malformed JSON,
    bytes that are not UTF-8, a CSV row with more or fewer cells than its header, a file that is not Parquet.
    """
    if source.startswith("hf:"):
        yield from _read_hub(source[3:])
        return
    path = builtin_path(source[len("builtin:") :]) if source.startswith("builtin:") else Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{source}: no such file")
    if path.is_dir():
        raise DataFormatError(str(path), None, None, f"is a folder; name the data files in it ({', '.join(SUFFIXES)})")
    suffix, compression = _layout(path)
    if suffix in DATABASE_SUFFIXES and compression is None:
        yield from read_label_rows(str(path), label_sources)
    elif suffix in (".jsonl", ".json"):
        yield from _read_json(path, compression, suffix)
    elif suffix == ".csv":
        yield from _read_csv(path, compression)
    elif suffix == ".parquet" and compression is None:
        yield from _read_parquet(path)
    else:
        raise DataFormatError(
            str(path), None, None,
            f"unsupported file type {''.join(path.suffixes)!r}; use one of {SUFFIXES} (jsonl, json and csv may be "
            f"compressed: {', '.join(COMPRESSIONS)}) or a labelling database ({', '.join(DATABASE_SUFFIXES)})",
        )  # fmt: skip


def _open_binary(path: Path, compression: str | None) -> IO[bytes]:
    return COMPRESSIONS[compression](path, "rb") if compression else path.open("rb")


class _NotUTF8(Exception):
    def __init__(self, line: int, byte: str, column: int) -> None:
        super().__init__(line)
        self.line, self.byte, self.column = line, byte, column

    def problem(self, where: str) -> str:
        return (
            f"{where} is not UTF-8 text (byte 0x{self.byte} at column {self.column}); save the file as UTF-8 "
            "(in most editors: Save with encoding > UTF-8)"
        )


def _lines(path: Path, compression: str | None) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of every line, decoded as UTF-8 (a leading byte-order mark is dropped).
    Raises :class:`_NotUTF8` at the first line that is not UTF-8; callers turn it into a row or line."""
    with _open_binary(path, compression) as f:
        try:
            for number, raw in enumerate(f, start=1):
                try:
                    yield number, raw.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    raise _NotUTF8(number, raw[e.start : e.start + 1].hex().upper(), e.start + 1) from None
        except (OSError, EOFError, lzma.LZMAError) as e:  # gzip.BadGzipFile is an OSError
            if compression is None:
                raise
            raise DataFormatError(str(path), None, None, f"expected a {compression} compressed file: {e}") from None


def _read_json(path: Path, compression: str | None, suffix: str) -> Iterator[tuple[int, object]]:
    """A ``.json`` file is read as one JSON document in any of :data:`JSON_LAYOUTS`, falling back to JSON
    lines; a ``.jsonl`` file as JSON lines, falling back to one document when its first line is not a value
    of its own (a pretty-printed document) or is a list (a JSON list on one line)."""
    if suffix == ".json":
        try:
            data = json.loads(_text(path, compression))
        except ValueError:  # JSONDecodeError among them
            pass  # JSON lines saved as .json, or malformed: the line-by-line reader says which line
        else:
            yield from _document_rows(path, data)
            return
    try:
        lines = ((n, t) for n, t in _lines(path, compression) if t.strip())
        first = next(lines, None)
        if first is None:
            return
        try:
            value = json.loads(first[1])
        except json.JSONDecodeError as e:
            yield from _read_json_document(path, compression, first[0], e)
            return
        except ValueError as e:
            raise DataFormatError(str(path), first[0], None, f"unreadable JSON ({e})") from None
        if isinstance(value, list):
            second = next(lines, None)
            if second is None:
                yield from _document_rows(path, value)
                return
            lines = itertools.chain([second], lines)
        yield first[0], value
        for number, text in lines:
            yield number, _parse_line(path, number, text)
    except _NotUTF8 as e:
        raise DataFormatError(str(path), e.line, None, e.problem("the line")) from None


def _text(path: Path, compression: str | None) -> str:
    try:
        return "".join(t for _, t in _lines(path, compression))
    except _NotUTF8 as e:
        raise DataFormatError(str(path), None, None, e.problem(f"line {e.line}")) from None


def _parse_line(path: Path, number: int, text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataFormatError(str(path), number, None, f"malformed JSON ({e.msg} at column {e.colno})") from None
    except ValueError as e:  # an integer too long for Python to read (over 4300 digits)
        raise DataFormatError(str(path), number, None, f"unreadable JSON ({e})") from None


def _is_one_row(value: dict) -> bool:
    """An object with row-format fields that is not a column layout: a field that is not a list, or one
    whose list holds message objects (``{"messages": [m1, m2]}`` is one conversation; ``{"messages": [[m1],
    [m2]]}`` and ``{"prompt": ["a", "b"], ...}`` are columns)."""
    fields = ROW_FIELDS & set(value)
    if not fields:
        return False
    if not all(isinstance(v, list) for v in value.values()):
        return True
    return any(isinstance(cell, dict) for name in fields for cell in value[name])


def _is_table(value: object) -> bool:
    """A JSON object whose values are all lists: columns, or a single list of rows under one key."""
    return isinstance(value, dict) and bool(value) and all(isinstance(v, list) for v in value.values())


def _read_json_document(path: Path, compression: str | None, line: int, line_error: json.JSONDecodeError):
    text = _text(path, compression)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if text.lstrip().startswith(("[", "{")) and e.lineno > 1:
            problem = f"malformed JSON at line {e.lineno}, column {e.colno} ({e.msg})"
        else:
            problem = f"malformed JSON on line {line} ({line_error.msg} at column {line_error.colno})"
        raise DataFormatError(str(path), None, None, f"{problem}; expected {JSON_LAYOUTS}") from None
    yield from _document_rows(path, data)


def _document_rows(path: Path, data: object) -> Iterator[tuple[int, object]]:
    if isinstance(data, list):
        yield from enumerate(data, start=1)
        return
    if isinstance(data, dict) and _is_one_row(data):
        yield 1, data  # one row saved as a JSON object ({"messages": [...]})
        return
    if _is_table(data):
        values = list(data.values())
        if len(values) == 1 and all(isinstance(v, dict) for v in values[0]):
            yield from enumerate(values[0], start=1)  # {"data": [rows]}: datasets' field="data"
            return
        lengths = {name: len(column) for name, column in data.items()}
        if len(set(lengths.values())) == 1:
            names = list(data)
            yield from enumerate((dict(zip(names, cells)) for cells in zip(*values)), start=1)
            return
        found = ", ".join(f"{k!r}: {n}" for k, n in list(lengths.items())[:6])
        raise DataFormatError(
            str(path), None, None, f"expected {JSON_LAYOUTS}; found column lists of different lengths ({found})"
        )
    if isinstance(data, dict):
        found = ", ".join(f"{k!r}: {_json_kind(v)}" for k, v in list(data.items())[:5])
        raise DataFormatError(str(path), None, None, f"expected {JSON_LAYOUTS}; found an object with {{{found}}}")
    raise DataFormatError(str(path), None, None, f"expected {JSON_LAYOUTS}; found {_json_kind(data)}")


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return f"a list of {len(value)}"
    names = {dict: "an object", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _read_csv(path: Path, compression: str | None) -> Iterator[tuple[int, object]]:
    """Rows of a CSV file with a header; every cell is a string, as the csv module reads it."""
    number = 0
    reader = csv.reader(text for _, text in _lines(path, compression))
    try:
        header = next(reader, None)
        if header is None or not any(h.strip() for h in header):
            raise DataFormatError(str(path), None, None, "expected a header row naming the fields; found an empty file")
        for cells in reader:
            if not cells:
                continue  # blank lines are not rows, as in csv.DictReader
            number += 1
            if len(cells) != len(header):
                problem = f"has {len(cells)} cells but the header names {len(header)} fields ({', '.join(header)})"
                raise DataFormatError(str(path), number, None, problem)
            yield number, dict(zip(header, cells))
    except _NotUTF8 as e:
        where = "the header" if e.line == 1 else f"line {e.line}"
        raise DataFormatError(str(path), number + 1 if e.line > 1 else None, None, e.problem(where)) from None
    except csv.Error as e:
        raise DataFormatError(str(path), number + 1, None, f"malformed CSV ({e})") from None


def _read_parquet(path: Path) -> Iterator[tuple[int, object]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        with path.open("rb") as f:
            start = f.read(16)
        found = f"a file starting with {start!r}" if start else "an empty file"
        raise DataFormatError(str(path), None, None, f"expected a Parquet file; found {found} ({e})") from None
    yield from enumerate(table.to_pylist(), start=1)


def _read_hub(spec: str) -> Iterator[tuple[int, object]]:
    import datasets

    name, _, split = spec.partition(":")
    dataset = datasets.load_dataset(name, split=split or "train")
    yield from enumerate(dataset, start=1)
