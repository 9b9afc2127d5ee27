"""A user's own per-sample vectors: embeddings (``--features``) and predicted probabilities
(``--pred-probs``), read and aligned with the samples' rows.

Accepted files:

* **Parquet or CSV with ids**: an id column (the manifest's ``--id-column``, else ``id``, else
  ``sample_id``), matched to the samples' ids.

  - ``--features``: one list column of floats (Parquet; the vector), or every other numeric
    column as one dimension each.
  - ``--pred-probs``: one numeric column per class, named by the class; other columns are
    ignored.
* **.npy**: a 2-D array with one row per manifest row, in the manifest's order (memory-mapped,
  so a million rows are not read twice).

Every dataset row needs a vector; trusted rows that are not dataset rows need one too (only a
file with ids can give it). Values must be finite; probabilities non-negative with rows summing
to 1. Each problem is one line naming the file, the row and what was expected.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from labelclean.data.dataset import Samples
from labelclean.errors import DataError
from labelclean.run import schema as S

VECTOR_SUFFIXES = (".parquet", ".csv", ".npy")
#: Row sums of predicted probabilities may be off by this much (float32 rounding, CSV digits).
PROB_SUM_TOLERANCE = 1e-3
_ID_NAMES = ("id", S.SAMPLE_ID)


def _check_suffix(path: Path, flag: str) -> None:
    if not path.is_file():
        raise DataError(f"{flag} {path}: file not found")
    if path.suffix.lower() not in VECTOR_SUFFIXES:
        raise DataError(f"{flag} {path}: expected a .parquet, .csv or .npy file, found "
                        f"{path.suffix!r}")


def _id_column(columns: list[str], id_column: str | None, path: Path, flag: str) -> str:
    for name in ([id_column] if id_column else []) + list(_ID_NAMES):
        if name in columns:
            return name
    wanted = ", ".join(repr(n) for n in ([id_column] if id_column else []) + list(_ID_NAMES))
    raise DataError(f"{flag} {path}: expected an id column ({wanted}), found "
                    f"{', '.join(map(repr, columns)) or 'no columns'}")


def _align(ids: np.ndarray, samples: Samples, path: Path, flag: str) -> np.ndarray:
    """Positions in the file of each sample's id; a one-line error for missing or repeated ids."""
    index = pd.Index(ids.astype(str))
    if index.has_duplicates:
        dup = index[index.duplicated()][0]
        raise DataError(f"{flag} {path}: id {dup!r} appears more than once; expected one row per sample")
    where = index.get_indexer(pd.Index(samples.table[S.SAMPLE_ID].astype(str)))
    missing = np.flatnonzero(where < 0)
    if len(missing):
        first = samples.table[S.SAMPLE_ID].iloc[missing[0]]
        raise DataError(f"{flag} {path}: {len(missing)} sample(s) have no row (first: id {first!r}); "
                        "expected one row for every dataset and trusted row")
    return where


def _by_manifest_row(array: np.ndarray, samples: Samples, path: Path, flag: str) -> np.ndarray:
    """Each sample's row in an array that follows the manifest's row order."""
    if array.ndim != 2:
        raise DataError(f"{flag} {path}: expected a 2-D array (rows x values), found shape {array.shape}")
    expected = len(samples.input.frame)
    if len(array) != expected:
        raise DataError(f"{flag} {path}: {len(array)} rows, expected {expected} (one per manifest "
                        "row, in its order)")
    rows = samples.table[S.ROW].to_numpy()
    if (rows < 0).any():
        first = samples.table.loc[rows < 0, S.SAMPLE_ID].iloc[0]
        raise DataError(f"{flag} {path}: trusted row {first!r} is not a dataset row, and an .npy "
                        "file has rows for the manifest only; give a Parquet or CSV file with ids")
    return rows


#: Rows read, checked or normalised at a time (a whole-table temporary is 4 GB at 10⁹ cells).
CHUNK_ROWS = 65_536


def _npy_rows(path: Path, array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``array[rows]`` as float32, read from the ``.npy`` file a chunk at a time.

    ``array`` is the file's memory map (for its shape and dtype). Plain reads, not the map:
    every page of a map that is touched counts in the process's resident memory, so gathering
    a 4 GB file through it would show 8 GB. Files the reader cannot stream (Fortran order,
    format 3) are gathered through the map."""
    out = np.empty((len(rows), array.shape[1]), dtype=np.float32)
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            return _gather(array, rows, out)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        _shape, fortran, dtype = read(f)
        if fortran or dtype.hasobject:
            return _gather(array, rows, out)
        where = np.full(len(array), -1, dtype=np.int64)  # file row -> output row
        where[rows] = np.arange(len(rows))
        if (where >= 0).sum() != len(rows):  # a file row wanted twice: gather instead
            return _gather(array, rows, out)
        width = array.shape[1] * dtype.itemsize
        for start in range(0, len(array), CHUNK_ROWS):
            count = min(CHUNK_ROWS, len(array) - start)
            chunk = np.frombuffer(f.read(count * width), dtype=dtype).reshape(count, -1)
            to = where[start:start + count]
            keep = to >= 0
            out[to[keep]] = chunk[keep]
    return out


def _gather(array: np.ndarray, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
    for i in range(0, len(rows), CHUNK_ROWS):
        out[i:i + CHUNK_ROWS] = array[rows[i:i + CHUNK_ROWS]]
    return out


def _finite(values: np.ndarray, path: Path, flag: str, ids: pd.Series) -> None:
    bad = np.concatenate([~np.isfinite(values[i:i + CHUNK_ROWS]).all(axis=1)
                          for i in range(0, len(values), CHUNK_ROWS)] or [np.zeros(0, dtype=bool)])
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{flag} {path}: {int(bad.sum())} row(s) hold NaN or infinite values "
                        f"(first: id {ids.iloc[i]!r}); expected finite numbers")


def read_features(path: Path, samples: Samples, id_column: str | None = None) -> np.ndarray:
    """``(N, D)`` float32 embeddings in the samples' row order."""
    flag = "--features"
    path = Path(path)
    _check_suffix(path, flag)
    if path.suffix.lower() == ".npy":
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        rows = _by_manifest_row(array, samples, path, flag)
        out = _npy_rows(path, array, rows)
    else:
        out = _features_from_table(path, samples, id_column, flag)
    if out.shape[1] == 0:
        raise DataError(f"{flag} {path}: expected vectors of at least one dimension, found none")
    _finite(out, path, flag, samples.table[S.SAMPLE_ID])
    return out


def _features_from_table(path: Path, samples: Samples, id_column: str | None, flag: str) -> np.ndarray:
    if path.suffix.lower() == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{flag} {path}: cannot read as Parquet ({exc})") from None
        key = _id_column(table.column_names, id_column, path, flag)
        ids = table.column(key).to_numpy(zero_copy_only=False)
        lists = [n for n in table.column_names if n != key
                 and (pa.types.is_list(table.schema.field(n).type)
                      or pa.types.is_large_list(table.schema.field(n).type)
                      or pa.types.is_fixed_size_list(table.schema.field(n).type))]
        if len(lists) > 1:
            raise DataError(f"{flag} {path}: expected one vector column, found {len(lists)} "
                            f"({', '.join(lists)})")
        if lists:
            column = table.column(lists[0]).combine_chunks()
            if column.null_count:
                raise DataError(f"{flag} {path}: {column.null_count} row(s) have no vector in "
                                f"column {lists[0]!r}")
            if pa.types.is_fixed_size_list(column.type):
                dim = column.type.list_size
            else:
                lengths = np.diff(column.offsets.to_numpy())
                if len(lengths) and (lengths != lengths[0]).any():
                    i = int(np.flatnonzero(lengths != lengths[0])[0])
                    raise DataError(f"{flag} {path}: vectors differ in length (row {i + 1}: "
                                    f"{lengths[i]}, row 1: {lengths[0]}); expected one length")
                dim = int(lengths[0]) if len(lengths) else 0
            flat = column.flatten().to_numpy(zero_copy_only=False)
            values = np.asarray(flat, dtype=np.float32).reshape(len(ids), dim)
        else:
            frame = table.drop([key]).to_pandas()
            values = _numeric(frame, path, flag)
    else:
        frame = pd.read_csv(path)
        key = _id_column(list(frame.columns), id_column, path, flag)
        ids = frame.pop(key).astype(str).to_numpy()
        values = _numeric(frame, path, flag)
    where = _align(np.asarray(ids), samples, path, flag)
    return np.ascontiguousarray(values[where], dtype=np.float32)


def _numeric(frame: pd.DataFrame, path: Path, flag: str) -> np.ndarray:
    other = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if other:
        raise DataError(f"{flag} {path}: column {other[0]!r} is not numeric; expected the id "
                        "column and one numeric column per dimension (or one list column)")
    return frame.to_numpy(dtype=np.float32)


def read_pred_probs(path: Path, samples: Samples, id_column: str | None = None) -> np.ndarray:
    """``(N, C)`` float32 predicted probabilities in the samples' row order, columns in class
    order, each row normalised to sum to 1."""
    flag = "--pred-probs"
    path = Path(path)
    _check_suffix(path, flag)
    classes = samples.classes
    if path.suffix.lower() == ".npy":
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        rows = _by_manifest_row(array, samples, path, flag)
        if array.shape[1] != len(classes):
            raise DataError(f"{flag} {path}: {array.shape[1]} columns, expected {len(classes)} "
                            f"(one per class, in the order {', '.join(classes[:10])}"
                            f"{' ...' if len(classes) > 10 else ''})")
        probs = _npy_rows(path, array, rows)
    else:
        frame = pd.read_parquet(path) if path.suffix.lower() == ".parquet" else pd.read_csv(path)
        frame.columns = [str(c) for c in frame.columns]
        key = _id_column(list(frame.columns), id_column, path, flag)
        missing = [c for c in classes if c not in frame.columns]
        if missing:
            raise DataError(f"{flag} {path}: no column for class(es) "
                            f"{', '.join(map(repr, missing[:5]))}; expected one column per class, "
                            "named by the class")
        values = _numeric(frame[classes], path, flag).astype(np.float32)
        probs = values[_align(frame[key].astype(str).to_numpy(), samples, path, flag)]
    ids = samples.table[S.SAMPLE_ID]
    _finite(probs, path, flag, ids)
    sums = np.zeros(len(probs))
    bad = np.zeros(len(probs), dtype=bool)
    for i in range(0, len(probs), CHUNK_ROWS):  # checked and normalised in place, in one pass
        part = slice(i, i + CHUNK_ROWS)
        sums[part] = probs[part].sum(axis=1, dtype=np.float64)
        bad[part] = (probs[part] < 0).any(axis=1)
        probs[part] /= np.where(sums[part] > 0, sums[part], 1.0)[:, None].astype(np.float32)
    bad |= np.abs(sums - 1) > PROB_SUM_TOLERANCE
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{flag} {path}: {int(bad.sum())} row(s) are not probabilities (id "
                        f"{ids.iloc[i]!r} sums to {sums[i]:.4g}); expected non-negative "
                        "values summing to 1 per row (apply a softmax to logits)")
    return probs
