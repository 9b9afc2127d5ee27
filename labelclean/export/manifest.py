"""``export``: corrected label files from a run, ready to audit again or to send to annotators.

Reads only the run folder: the corrected manifest carries each row's ``sample_id``, so the
original input is never re-read. The rule that picks which labels change lives in
:mod:`labelclean.scoring` (``threshold_flags``) and in the audit's ``action`` column.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from labelclean.data.dataset import label_text
from labelclean.errors import ConfigError, DataError
from labelclean.export.decisions import load_decisions
from labelclean.io import read_table, write_table
from labelclean.run import schema as S
from labelclean.run.folder import Run
from labelclean.run.writer import check_destination, rewrite_paths, run_files
from labelclean.scoring import threshold_flags

POLICIES = ("relabel", "flag", "drop")
EXPORT_FORMATS = ("csv", "parquet", "jsonl")
FORMATS = (*EXPORT_FORMATS, "label-studio")


def apply_policy(
    corrected: pd.DataFrame,
    names: dict[str, str],
    label_column: str,
    policy: str,
    threshold: float | None,
    label_values: dict[str, object],
) -> tuple[pd.DataFrame, int]:
    """Apply an export policy to a corrected manifest; return the table and rows changed.

    ``names`` maps the schema's added columns to their names in ``corrected``.
    ``relabel``: labels become the suggestion where the audit chose ``relabel`` or a trusted
    label exists (``verified``); with ``threshold``, also wherever
    :func:`~labelclean.scoring.threshold_flags` flags a row. ``flag``: labels unchanged, audit
    columns kept. ``drop``: flagged rows removed. ``relabel`` and ``drop`` return only the
    input's own columns, ready to audit again.
    """
    if policy not in POLICIES:
        raise ConfigError(f"--policy: expected one of {', '.join(POLICIES)}, found {policy!r}")
    action = corrected[names[S.ACTION]].astype(str)
    flagged = np.array(corrected[names[S.IS_SUSPECT]], dtype=bool)
    if threshold is not None:
        suspicion = corrected[names[S.SUSPICION]].fillna(0.0).to_numpy(dtype=float)
        flagged = threshold_flags(suspicion, (action == S.VERIFIED_ACTION).to_numpy(), threshold)
    own = [c for c in corrected.columns if c not in names.values()]
    if policy == "flag":
        return corrected.copy(), 0
    if policy == "drop":
        return corrected.loc[~flagged, own].reset_index(drop=True), int(flagged.sum())
    suggested = corrected[names[S.SUGGESTED]].astype(str)
    given = corrected[label_column].map(label_text)
    change = np.array(action.isin([S.RELABEL, S.VERIFIED_ACTION]), dtype=bool)
    if threshold is not None:
        change |= flagged
    change &= (suggested != given).to_numpy()
    out = corrected[own].copy()
    if change.any():
        out[label_column] = out[label_column].astype(object)
        out.loc[change, label_column] = suggested[change].map(lambda s: label_values.get(s, s)).to_numpy()
    return out, int(change.sum())


def export_labels(
    run_dir: Path,
    fmt: str | None = None,
    policy: str = "relabel",
    threshold: float | None = None,
    dest: Path | None = None,
    decisions: bool = False,
    promote_trusted: Path | None = None,
    overwrite: bool = False,
) -> tuple[Path, int, int]:
    """Write the run's corrected manifest under ``policy``; return (path, rows changed, rows).

    The format defaults to the input's (CSV for image folders). Relative image paths are
    rewritten so they resolve from the written file's folder. With ``decisions``, reviewers'
    decisions (``decisions.csv``) win over the model's suggestions, and ``changes.csv`` lists
    every changed label with who decided and when. ``promote_trusted`` adds reviewed labels
    to a trusted file for the next audit. An explicit ``dest`` never replaces an input or a
    file of the run, nor an existing file unless ``overwrite``.
    """
    from labelclean.export.label_studio import export_label_studio

    run = Run.open(Path(run_dir))
    fmt = fmt or (run.input_kind if run.input_kind in ("parquet", "jsonl") else "csv")
    if fmt not in FORMATS:
        raise ConfigError(f"--format: expected one of {', '.join(FORMATS)}, found {fmt!r}")
    if threshold is not None and not 0 < threshold < 1:
        raise ConfigError(f"--threshold: expected a value in (0, 1), found {threshold}")
    inputs = {Path(p).resolve() for p in (run.config.dataset, run.config.trusted) if p}
    own = {p.resolve() for p in run_files(run.path)}
    if dest is not None:
        check_destination(Path(dest), inputs | own, overwrite)
    if promote_trusted is not None and Path(promote_trusted).resolve() in ({Path(run.config.dataset).resolve()} | own):
        raise ConfigError(f"--promote-trusted {promote_trusted}: is the dataset or a file of the run; "
                          "name a trusted file")
    if fmt == "label-studio":
        return export_label_studio(run, dest)
    corrected = run.corrected()
    names = run.added_columns(corrected)
    values = run.label_values(corrected)
    label_column, path_column = run.label_column, run.path_column
    frame, changed = apply_policy(corrected, names, label_column, policy, threshold, values)
    dest = Path(dest) if dest else run.path / f"labels-{policy}.{fmt}"
    if decisions or promote_trusted:
        ids = corrected[names[S.SAMPLE_ID]].astype(str).tolist()
        decided = load_decisions(run.path)
        decided = decided[decided["decision"] != "skip"].set_index(S.SAMPLE_ID)
        if decisions:
            if policy == "drop":
                raise ConfigError("--decisions applies labels; use it with --policy relabel or flag")
            frame, changed = _apply_decisions(run, frame, corrected, ids, decided, label_column, values)
        if promote_trusted:
            images = corrected[names[S.IMAGE_PATH]].astype(str).tolist()
            promote(run, images, ids, decided, Path(promote_trusted))
    if path_column in frame.columns:
        frame[path_column] = rewrite_paths(frame[path_column].astype(object), run.path, dest.parent)
    write_table(dest, frame, fmt)
    return dest, changed, len(corrected)


def _apply_decisions(run: Run, frame: pd.DataFrame, corrected: pd.DataFrame, ids: list[str],
                     decided: pd.DataFrame, label_column: str, values: dict[str, Any]
                     ) -> tuple[pd.DataFrame, int]:
    frame = frame.copy()
    frame[label_column] = frame[label_column].astype(object)
    old = corrected[label_column].map(label_text).tolist()
    decided_at = run.summary.get("finished_at", "")
    changes = []
    for i, sid in enumerate(ids):
        if sid in decided.index:
            d = decided.loc[sid]
            frame.at[i, label_column] = values.get(str(d["label"]), str(d["label"]))
            who, when = f"reviewer:{d['reviewer']}", str(d["decided_at"])
        else:
            who, when = "model", decided_at
        new = label_text(frame.at[i, label_column])
        if new != old[i]:
            changes.append({S.SAMPLE_ID: sid, "old_label": old[i], "new_label": new,
                            "decided_by": who, "decided_at": when})
    write_table(run.path / "changes.csv", pd.DataFrame(changes, columns=S.CHANGE_COLUMNS))
    return frame, len(changes)


def promote(run: Run, images: list[str], ids: list[str], decided: pd.DataFrame, target: Path) -> None:
    """Add reviewed labels to a trusted file for the next audit.

    Every row and column the file had is kept; a reviewed image already in it gets the new
    label in place (later decisions win), others are appended as ``path, label`` rows with
    paths relative to the file. The file keeps its format and permissions.
    """
    rows = []
    base = target.parent.resolve()
    for sid, image in zip(ids, images):
        if sid in decided.index:
            rel = Path(os.path.relpath(image, base)).as_posix()
            rows.append((rel, image, str(decided.loc[sid, "label"])))
    if target.exists():
        old = read_table(target)
        if S.missing(old, ["path", "label"]):
            raise DataError(f"{target}: expected a trusted file with path and label columns, "
                            f"found {', '.join(map(str, old.columns))}")
    else:
        old = pd.DataFrame(columns=["path", "label"])
    old = old.copy()
    resolved = [os.path.realpath(p if os.path.isabs(p) else base / p) for p in old["path"].astype(str)]
    where = {p: i for i, p in enumerate(resolved)}
    extra = []
    for rel, image, label in rows:
        i = where.get(os.path.realpath(image))
        if i is None:
            extra.append({"path": rel, "label": label})
        else:
            old.loc[old.index[i], "label"] = label
    if extra:
        old = pd.concat([old, pd.DataFrame(extra)], ignore_index=True)
    old["label"] = old["label"].astype(object)
    mode = target.stat().st_mode & 0o777 if target.exists() else None
    write_table(target, old)
    if mode is not None:
        os.chmod(target, mode)

