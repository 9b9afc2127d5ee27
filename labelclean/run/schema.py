"""The run folder's tables: every column name and its type, in one place.

A run folder describes itself: ``scores.*`` and ``corrected.*`` both carry ``sample_id`` and
the resolved ``image_path`` of every row, and ``summary.json`` records
``scores_schema_version``. Every reader and writer of a run goes through this module, so a
CSV-only run reads back with the same types as its Parquet twin (``is_suspect`` is a bool,
``rank`` a nullable integer, never the strings ``"False"`` or ``""``).

``suspicion`` is in [0, 1] and higher means the given label is more likely wrong (the
opposite direction of cleanlab's ``label_quality``).

``suggested_label`` has one meaning everywhere: the class the audit proposes *if* the given
label is wrong, i.e. the most likely class other than the given one; on verified rows it is the
verified label. ``predicted_label`` is the model's most likely class, whatever the given label.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

#: Bumped whenever a column is added, removed, renamed or changes meaning.
SCORES_SCHEMA_VERSION = 3
#: Versions this labelclean reads (3 added the ``exam`` column; a run of 2 reads without it).
READABLE_SCHEMA_VERSIONS = (2, 3)

SAMPLE_ID = "sample_id"
PATH = "path"
IMAGE_PATH = "image_path"
GIVEN = "given_label"
SUGGESTED = "suggested_label"
PREDICTED = "predicted_label"
SUSPICION = "suspicion"
IS_SUSPECT = "is_suspect"
RANK = "rank"
ACTION = "action"
VERIFIED = "verified"
P_WRONG = "p_wrong"
SOURCE = "source"  # "dataset" or "trusted" (an image only the trusted file names)
EXAM = "exam"  # a verified row scored blind to measure the audit (labelclean.exam)

# Extra per-sample columns some methods add.
AGREEMENT = "agreement"
#: Area under the margin (training dynamics, :class:`labelclean.methods.base.Dynamics`).
AUM = "aum"
DOUBTED_BY = "doubted_by"
EVIDENCE_SUFFIX = "_suspicion"

#: The fixed columns of ``scores.*``, in order, with their pandas dtypes.
SCORES_TYPES: dict[str, str] = {
    SAMPLE_ID: "string",
    PATH: "string",
    IMAGE_PATH: "string",
    SOURCE: "string",
    GIVEN: "string",
    SUGGESTED: "string",
    PREDICTED: "string",
    SUSPICION: "float64",
    P_WRONG: "float64",
    IS_SUSPECT: "bool",
    RANK: "Int64",
    ACTION: "string",
    VERIFIED: "bool",
}
SCORE_COLUMNS = list(SCORES_TYPES)

RELABEL, REVIEW, KEEP, VERIFIED_ACTION, SKIPPED = "relabel", "review", "keep", "verified", "skipped"
ACTIONS = (RELABEL, REVIEW, KEEP, VERIFIED_ACTION, SKIPPED)

# The in-memory sample table (labelclean.data.dataset.Samples) shares the names above where
# they mean the same; these are its own.
ABS_PATH = "abs_path"
LABEL = "label"
LABEL_INDEX = "label_index"
TRUSTED_LABEL = "trusted_label"
TARGET = "target"
ROW = "row"
DATASET, TRUSTED = "dataset", "trusted"
SOURCES = (DATASET, TRUSTED)

#: Columns added to a corrected manifest (prefixed with ``labelclean_`` if the input has them).
ADDED_COLUMNS = [SAMPLE_ID, IMAGE_PATH, SUGGESTED, PREDICTED, SUSPICION, IS_SUSPECT, ACTION]
ADDED_PREFIX = "labelclean_"

#: ``decisions.csv``: one appended row per human decision, the last per sample wins.
DECISION_COLUMNS = [SAMPLE_ID, GIVEN, "decision", "label", "reviewer", "decided_at"]
DECISION_KINDS = ("accept", "keep", "relabel", "skip")

#: ``changes.csv``: every label an export changed, and who decided it.
CHANGE_COLUMNS = [SAMPLE_ID, "old_label", "new_label", "decided_by", "decided_at"]

#: ``transition_matrix.csv``: the index column's name (rows: true class, columns: given).
TRANSITION_INDEX = "true\\given"
#: Decimals kept in tables people read (scores, transition matrix).
DECIMALS = 6
TRANSITION_DECIMALS = 4

_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no", ""}


def _as_bool(values: pd.Series, column: str) -> pd.Series:
    if values.dtype == bool:
        return values
    text = values.astype(str).str.strip().str.lower()
    unknown = sorted(set(text) - _TRUE - _FALSE)
    if unknown:
        raise ValueError(f"column {column}: expected true/false, found {unknown[0]!r}")
    return text.isin(_TRUE)


def coerce(frame: pd.DataFrame, types: dict[str, str] | None = None) -> pd.DataFrame:
    """Give the known columns of ``frame`` their schema types (for tables read from CSV)."""
    types = SCORES_TYPES if types is None else types
    out = frame.copy()
    for column, dtype in types.items():
        if column not in out.columns:
            continue
        if dtype == "bool":
            out[column] = _as_bool(out[column], column)
        elif dtype == "float64":
            values = out[column].replace("", np.nan) if out[column].dtype == object else out[column]
            out[column] = pd.to_numeric(values, errors="raise").astype("float64")
        elif dtype == "Int64":
            out[column] = pd.to_numeric(out[column].replace("", pd.NA)).astype("Int64")
        else:
            out[column] = out[column].astype(object).where(out[column].notna(), "").astype(str)
    if EXAM in out.columns:
        out[EXAM] = _as_bool(out[EXAM], EXAM)
    for column in out.columns:
        if column.endswith(EVIDENCE_SUFFIX) or column.endswith("_p_wrong") or column in (AGREEMENT, AUM):
            out[column] = pd.to_numeric(out[column], errors="coerce")
    return out


def missing(frame: pd.DataFrame, required: Iterable[str]) -> list[str]:
    return [c for c in required if c not in frame.columns]


def evidence_columns(frame: pd.DataFrame) -> list[str]:
    """The per-method suspicion columns (``<method>_suspicion``)."""
    return [c for c in frame.columns if c.endswith(EVIDENCE_SUFFIX) and c != SUSPICION]


def added_names(input_columns: Iterable[str]) -> dict[str, str]:
    """Names for the added columns that do not collide with the input's own columns."""
    taken = set(map(str, input_columns))
    return {c: (f"{ADDED_PREFIX}{c}" if c in taken else c) for c in ADDED_COLUMNS}


def round_floats(values: np.ndarray, decimals: int = DECIMALS) -> np.ndarray:
    values = np.asarray(values)
    return values.round(decimals) if values.dtype.kind == "f" else values
