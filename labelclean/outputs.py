"""The run's tables: ``scores``, ``corrected`` manifests and exports.

Column names live here, not as literals across the code. ``suspicion`` is in [0, 1] and higher
means the given label is more likely wrong (the opposite direction of cleanlab's
``label_quality``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from labelclean.data.dataset import label_text
from labelclean.errors import ConfigError
from labelclean.io import write_table

SCORES_SCHEMA_VERSION = 1
SAMPLE_ID = "sample_id"
PATH = "path"
GIVEN = "given_label"
SUGGESTED = "suggested_label"
SUSPICION = "suspicion"
IS_SUSPECT = "is_suspect"
RANK = "rank"
ACTION = "action"
VERIFIED = "verified"
P_WRONG = "p_wrong"
SCORE_COLUMNS = [SAMPLE_ID, PATH, GIVEN, SUGGESTED, SUSPICION, IS_SUSPECT, RANK, ACTION, VERIFIED,
                 P_WRONG]
#: Columns added to a corrected manifest (prefixed with ``labelclean_`` if the input has them).
ADDED_COLUMNS = [SUGGESTED, SUSPICION, IS_SUSPECT, ACTION]
ACTIONS = ("relabel", "review", "keep", "verified", "skipped")
POLICIES = ("relabel", "flag", "drop")
EXPORT_FORMATS = ("csv", "parquet", "jsonl")


def added_names(input_columns: list[str]) -> dict[str, str]:
    """Names for the added columns that do not collide with the input's own columns."""
    taken = set(map(str, input_columns))
    return {c: (f"labelclean_{c}" if c in taken else c) for c in ADDED_COLUMNS}


def rewrite_paths(values: pd.Series, from_dir: Path, to_dir: Path) -> pd.Series:
    """Relative paths written against ``from_dir``, rewritten to resolve from ``to_dir``.

    Absolute paths are kept as they are. The files referenced do not change.
    """
    src, dst = Path(from_dir).resolve(), Path(to_dir).resolve()
    if src == dst:
        return values

    def one(v: object) -> object:
        if not isinstance(v, str) or os.path.isabs(v) or v == "":
            return v
        return Path(os.path.relpath(os.path.normpath(src / v), dst)).as_posix()

    return values.map(one)


def apply_policy(
    corrected: pd.DataFrame,
    label_column: str,
    policy: str,
    threshold: float | None,
    label_values: dict[str, object],
) -> tuple[pd.DataFrame, int]:
    """Apply an export policy to a corrected manifest; return the table and rows changed.

    ``relabel``: labels become the suggestion where the audit chose ``relabel`` (strong
    evidence) or a trusted label exists (``verified``); with ``threshold``, also wherever
    ``suspicion >= threshold`` and the suggestion differs. ``flag``: labels unchanged, audit
    columns kept. ``drop``: flagged rows removed (``is_suspect``, or ``suspicion >= threshold``).
    ``relabel`` and ``drop`` return only the input's own columns, ready to audit again.
    """
    if policy not in POLICIES:
        raise ConfigError(f"--policy: expected one of {', '.join(POLICIES)}, found {policy!r}")
    names = added_names([c for c in corrected.columns if c not in ADDED_COLUMNS])
    names = {k: (v if v in corrected.columns else k) for k, v in names.items()}
    action = corrected[names[ACTION]].astype(str)
    suspicion = pd.to_numeric(corrected[names[SUSPICION]], errors="coerce").fillna(0.0)
    flagged = corrected[names[IS_SUSPECT]].astype(str).str.lower().isin(["true", "1"])
    if threshold is not None:
        flagged = (suspicion >= threshold) & (action != "verified")
    own = [c for c in corrected.columns if c not in names.values()]
    if policy == "flag":
        return corrected.copy(), 0
    if policy == "drop":
        return corrected.loc[~flagged.to_numpy(), own].reset_index(drop=True), int(flagged.sum())
    suggested = corrected[names[SUGGESTED]].astype(str)
    given = corrected[label_column].map(label_text)
    change = action.isin(["relabel", "verified"])
    if threshold is not None:
        change |= flagged
    change &= suggested != given
    out = corrected[own].copy()
    new_values = suggested[change].map(lambda s: label_values.get(s, s))
    if change.any():
        out[label_column] = out[label_column].astype(object)
        out.loc[change.to_numpy(), label_column] = new_values.to_numpy()
    return out, int(change.sum())


def write_manifest(frame: pd.DataFrame, dest: Path, fmt: str) -> Path:
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"--format: expected one of {', '.join(EXPORT_FORMATS)}, found {fmt!r}")
    return write_table(dest, frame, fmt)


def ranks(suspicion: np.ndarray, eligible: np.ndarray) -> pd.Series:
    """1-based rank by descending suspicion among ``eligible`` rows; missing elsewhere."""
    out = pd.Series(pd.array([pd.NA] * len(suspicion), dtype="Int64"))
    idx = np.flatnonzero(eligible)
    order = idx[np.argsort(-suspicion[idx], kind="stable")]
    out.iloc[order] = np.arange(1, len(order) + 1)
    return out
