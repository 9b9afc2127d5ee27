"""Writing a run folder: the tables of :mod:`labelclean.run.schema`, atomically.

Every file goes through :mod:`labelclean.io` (temporary file, then rename), so a reader
never sees half a table. Relative image paths in a written manifest are rewritten so they
resolve from the written file's folder; the files they name never change.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from labelclean.data.dataset import label_text
from labelclean.errors import ConfigError
from labelclean.io import write_table
from labelclean.run import schema as S

if TYPE_CHECKING:
    from labelclean.data.dataset import Samples
    from labelclean.scoring import Scored

#: Files a run folder may hold; ``--overwrite`` removes them all before the new run starts.
RUN_FILES = (
    "config.json", "summary.json", "scores.csv", "scores.parquet", "corrected.csv",
    "corrected.parquet", "corrected.jsonl", "transition_matrix.csv", "skipped.csv", "report.html",
    "checkpoint.pt",
    "decisions.csv", "changes.csv", "mslg_soft_labels.parquet", "label-studio-tasks.json",
    "label-studio-tasks-config.xml", "evaluation.json",
)
RUN_GLOBS = ("labels-*.csv", "labels-*.parquet", "labels-*.jsonl", ".*.tmp")


def run_files(run_dir: Path) -> list[Path]:
    """The files in ``run_dir`` that a run writes (for ``--overwrite`` and output checks)."""
    found = [run_dir / n for n in RUN_FILES if (run_dir / n).exists()]
    for pattern in RUN_GLOBS:
        found.extend(p for p in run_dir.glob(pattern) if p.is_file())
    return sorted(set(found))


def clear_run(run_dir: Path, keep: set[Path]) -> None:
    """Remove an earlier run's files (never one of ``keep``: the audit's inputs)."""
    for p in run_files(run_dir):
        if p.resolve() not in keep:
            p.unlink()


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


def scores_frame(samples: Samples, scored: Scored, columns: dict[str, np.ndarray]) -> pd.DataFrame:
    """The ``scores`` table: the schema's columns, then each method's evidence columns."""
    table = samples.table
    classes = np.array(samples.classes, dtype=object)
    rank = pd.array(scored.rank, dtype="Int64")
    rank[scored.rank == 0] = pd.NA  # verified rows have no rank
    frame = pd.DataFrame({
        S.SAMPLE_ID: table[S.SAMPLE_ID].to_numpy(),
        S.PATH: table[S.PATH].to_numpy(),
        S.IMAGE_PATH: table[S.ABS_PATH].to_numpy(),
        S.SOURCE: table[S.SOURCE].to_numpy(),
        S.GIVEN: table[S.LABEL].to_numpy(),
        S.SUGGESTED: classes[scored.suggested],
        S.PREDICTED: classes[scored.predicted],
        S.SUSPICION: scored.suspicion.round(S.DECIMALS),
        S.P_WRONG: scored.p_wrong.round(S.DECIMALS),
        S.IS_SUSPECT: scored.is_suspect,
        S.RANK: rank,
        S.ACTION: scored.action,
        S.VERIFIED: np.asarray(samples.verified, dtype=bool),
    })
    frame = S.coerce(frame)
    for name, values in {**columns, **scored.columns}.items():
        frame[name] = S.round_floats(np.asarray(values).copy())
    return frame


def write_scores(run_dir: Path, scores: pd.DataFrame) -> list[str]:
    write_table(run_dir / "scores.csv", scores)
    write_table(run_dir / "scores.parquet", scores)
    return ["scores.csv", "scores.parquet"]


def write_transition(run_dir: Path, transition: pd.DataFrame) -> str:
    table = transition.round(S.TRANSITION_DECIMALS).reset_index()
    write_table(run_dir / "transition_matrix.csv", table)
    return "transition_matrix.csv"


def write_arrays(run_dir: Path, samples: Samples, arrays: dict[str, np.ndarray]) -> list[str]:
    names = []
    for name, values in arrays.items():
        table = pd.DataFrame(values, columns=samples.classes)
        table.insert(0, S.SAMPLE_ID, samples.table[S.SAMPLE_ID].to_numpy())
        write_table(run_dir / f"{name}.parquet", table)
        names.append(f"{name}.parquet")
    return names


def write_corrected(samples: Samples, scores: pd.DataFrame, run_dir: Path) -> tuple[str, dict[str, str]]:
    """Every input row and column, plus the audit's columns (sample id, resolved image path,
    suggestion, prediction, suspicion, flag, action); return the file name and the names the
    added columns got (prefixed where the input already has such a column).

    Input rows missing from the scored samples (unreadable images) keep action ``skipped``.
    """
    inp = samples.input
    frame = inp.frame.copy()
    if inp.has_paths:
        frame[inp.path_column] = rewrite_paths(frame[inp.path_column].astype(object), inp.base_dir, run_dir)
    names = S.added_names(frame.columns)
    dataset = (samples.table[S.SOURCE] == S.DATASET).to_numpy()
    pick = scores[dataset].set_index(samples.table.loc[dataset, S.ROW].to_numpy()).reindex(
        np.arange(len(frame)))
    known = pick[S.SAMPLE_ID].notna().to_numpy()
    given = frame[inp.label_column].map(label_text).to_numpy()
    ids = inp.ids()
    frame[names[S.SAMPLE_ID]] = np.where(known, pick[S.SAMPLE_ID].to_numpy(dtype=object), ids)
    frame[names[S.IMAGE_PATH]] = np.where(known, pick[S.IMAGE_PATH].to_numpy(dtype=object),
                                          inp.abs_paths())
    frame[names[S.SUGGESTED]] = np.where(known, pick[S.SUGGESTED].to_numpy(dtype=object), given)
    frame[names[S.PREDICTED]] = np.where(known, pick[S.PREDICTED].to_numpy(dtype=object), "")
    frame[names[S.SUSPICION]] = pick[S.SUSPICION].to_numpy(dtype=float)
    frame[names[S.IS_SUSPECT]] = np.where(known, pick[S.IS_SUSPECT].to_numpy(dtype=object), False).astype(bool)
    frame[names[S.ACTION]] = np.where(known, pick[S.ACTION].to_numpy(dtype=object), S.SKIPPED)
    name = f"corrected.{inp.kind if inp.kind in ('parquet', 'jsonl') else 'csv'}"
    write_table(run_dir / name, frame)
    return name, names


def check_destination(dest: Path, protected: set[Path], overwrite: bool, what: str = "--out") -> None:
    """Refuse to write over an input or a run's own files; ask for ``overwrite`` otherwise."""
    target = Path(dest).resolve()
    if target in protected:
        raise ConfigError(f"{what} {dest}: is an input or a file of the run; choose another path")
    if target.exists() and not overwrite:
        raise ConfigError(f"{what} {dest}: already exists; pass --overwrite to replace it")
