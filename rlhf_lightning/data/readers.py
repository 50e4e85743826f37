"""Reading rows from local files (jsonl, json, parquet, csv), the project's shipped assets, or the hub.

Sources are strings:

- a local path ending in ``.jsonl``, ``.json``, ``.parquet`` or ``.csv``;
- ``builtin:NAME`` for a file shipped in ``rlhf_lightning/data/assets`` (``builtin:demonstrations.jsonl``);
- ``hf:OWNER/NAME`` or ``hf:OWNER/NAME:SPLIT`` for a dataset on the Hugging Face hub (split ``train`` by default).

Rows are numbered from 1 as a person counts them: the line of a jsonl file, the element of a json list,
the data row of a csv file (the header is not counted), the record of a parquet file or hub split.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from rlhf_lightning.data.errors import DataFormatError

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


def builtin_path(name: str) -> Path:
    """Path of a data file shipped with the package."""
    path = Path(str(resources.files("rlhf_lightning.data") / "assets" / name))
    if not path.exists():
        available = sorted(p.name for p in path.parent.glob("*.jsonl"))
        raise FileNotFoundError(f"no builtin data file {name!r}; available: {', '.join(available)}")
    return path


def describe(source: str) -> str:
    return str(builtin_path(source[len("builtin:") :])) if source.startswith("builtin:") else source


def read_rows(source: str) -> Iterator[tuple[int, object]]:
    """Yield ``(row_number, row)`` pairs. Rows are usually dicts; anything else is left to the caller to reject."""
    if source.startswith("hf:"):
        yield from _read_hub(source[3:])
        return
    path = builtin_path(source[len("builtin:") :]) if source.startswith("builtin:") else Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{source}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _read_jsonl(path)
    elif suffix == ".json":
        yield from _read_json(path)
    elif suffix == ".csv":
        yield from _read_csv(path)
    elif suffix == ".parquet":
        yield from _read_parquet(path)
    else:
        raise DataFormatError(str(path), None, None, f"unsupported file type {suffix!r}; use one of {SUFFIXES}")


def _read_jsonl(path: Path) -> Iterator[tuple[int, object]]:
    with path.open(encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                problem = f"malformed JSON ({e.msg} at column {e.colno})"
                raise DataFormatError(str(path), line_number, None, problem) from None
            yield line_number, row


def _read_json(path: Path) -> Iterator[tuple[int, object]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataFormatError(str(path), None, None, f"malformed JSON ({e.msg} at line {e.lineno})") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]} style wrappers
    if not isinstance(data, list):
        raise DataFormatError(str(path), None, None, "expected a JSON list of rows (or a jsonl file)")
    yield from enumerate(data, start=1)


def _read_csv(path: Path) -> Iterator[tuple[int, object]]:
    with path.open(encoding="utf-8", newline="") as f:
        yield from enumerate(csv.DictReader(f), start=1)


def _read_parquet(path: Path) -> Iterator[tuple[int, object]]:
    import pyarrow.parquet as pq

    yield from enumerate(pq.read_table(path).to_pylist(), start=1)


def _read_hub(spec: str) -> Iterator[tuple[int, object]]:
    import datasets

    name, _, split = spec.partition(":")
    dataset = datasets.load_dataset(name, split=split or "train")
    yield from enumerate(dataset, start=1)
