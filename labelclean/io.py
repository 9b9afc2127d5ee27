"""Atomic writes and table reading. Outputs never appear half-written."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from labelclean.errors import DataError

TABLE_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl"}


def _file_mode() -> int:
    """The mode a new file gets under the user's umask (``tempfile`` would give 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    The file gets the permissions any file the user writes gets (their umask), so the rest of
    an annotation team can read a run folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: Path, text: str) -> Path:
    def write(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")

    return atomic_write(path, write)


def json_text(obj: Any) -> str:
    """The one JSON writer: indented, UTF-8 as is, slashes unescaped, numpy values as numbers."""
    return json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n"


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts (missing values become ``null``)."""
    clean = frame.astype(object).where(frame.notna(), None)
    return [dict(zip(map(str, clean.columns), row)) for row in clean.itertuples(index=False)]


def write_json(path: Path, obj: Any) -> Path:
    return write_text(path, json_text(obj))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def table_format(path: Path) -> str:
    fmt = TABLE_SUFFIXES.get(Path(path).suffix.lower())
    if fmt is None:
        raise DataError(
            f"{path}: expected a .csv, .parquet or .jsonl file, found suffix {Path(path).suffix!r}"
        )
    return fmt


def write_table(path: Path, df: pd.DataFrame, fmt: str | None = None) -> Path:
    """Write ``df`` as CSV, Parquet or JSON lines (by ``fmt`` or the suffix), atomically."""
    fmt = fmt or table_format(path)

    def write(tmp: Path) -> None:
        if fmt == "csv":
            df.to_csv(tmp, index=False)
        elif fmt == "parquet":
            df.to_parquet(tmp, index=False)
        elif fmt == "jsonl":
            df.to_json(tmp, orient="records", lines=True, force_ascii=False)
        else:
            raise ValueError(f"unknown table format {fmt!r}")

    return atomic_write(path, write)


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV, Parquet or JSON-lines table, with one-line errors for unreadable files."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    fmt = table_format(path)
    try:
        if fmt == "csv":
            # Keep values as written: labels like "01" or "nan" must stay strings.
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        if fmt == "parquet":
            return pd.read_parquet(path)
        return pd.read_json(path, orient="records", lines=True, dtype=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: expected a table with a header row, found an empty file") from None
    except Exception as exc:  # pandas and pyarrow raise many types for malformed files
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: cannot read as {fmt}: {msg}") from None
