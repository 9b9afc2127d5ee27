"""Human decisions on suspects: ``decisions.csv`` in the run folder, one appended row each.

Columns (:data:`labelclean.run.schema.DECISION_COLUMNS`): ``sample_id, given_label, decision,
label, reviewer, decided_at``. ``decision`` is ``accept`` (take the suggestion), ``keep`` (the
given label is right), ``relabel`` (another label) or ``skip``. Rows are appended and flushed
as they are made, so an interruption loses nothing; the last row for a sample wins.

Decisions come from the interactive review, the HTML report's download, a CSV, or a Label
Studio export (:mod:`labelclean.export.label_studio`); :func:`import_decisions` validates them
all the same way.
"""

from __future__ import annotations

import csv
import getpass
import os
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from labelclean.data.dataset import raise_problems
from labelclean.errors import DataError
from labelclean.io import read_table
from labelclean.run import schema as S
from labelclean.run.folder import Run

DECISIONS = "decisions.csv"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def reviewer() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user database entry
        return "reviewer"


def append_decision(run_dir: Path, row: dict[str, str]) -> None:
    """Append one decision and flush it to disk before returning."""
    path = Path(run_dir) / DECISIONS
    new = not path.exists()
    with path.open("a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=S.DECISION_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in S.DECISION_COLUMNS})
        f.flush()
        os.fsync(f.fileno())


def load_decisions(run_dir: Path) -> pd.DataFrame:
    """All decisions of a run (empty table if none), last one per sample kept."""
    path = Path(run_dir) / DECISIONS
    if not path.exists():
        return pd.DataFrame(columns=S.DECISION_COLUMNS)
    frame = read_table(path)
    absent = S.missing(frame, S.DECISION_COLUMNS)
    if absent:
        raise DataError(f"{path}: expected columns {', '.join(S.DECISION_COLUMNS)}, "
                        f"missing {', '.join(absent)}")
    return frame.drop_duplicates(S.SAMPLE_ID, keep="last").reset_index(drop=True)


def validate_decisions(frame: pd.DataFrame, ids: set[str], classes: list[str], source: Path) -> None:
    """Unknown ids, unknown labels and unknown decision kinds are errors naming the row."""
    problems = []
    known = set(classes)
    for i, r in frame.reset_index(drop=True).iterrows():
        where = f"{source} row {int(str(i)) + 1}"
        if str(r[S.SAMPLE_ID]) not in ids:
            problems.append(f"{where}: sample id {r[S.SAMPLE_ID]!r} is not in the run")
        if str(r["decision"]) not in S.DECISION_KINDS:
            problems.append(f"{where}: decision {r['decision']!r} is not one of "
                            f"{', '.join(S.DECISION_KINDS)}")
        elif str(r["decision"]) != "skip" and str(r["label"]) not in known:
            problems.append(f"{where}: label {r['label']!r} is not a class "
                            f"(classes: {', '.join(classes[:20])})")
    raise_problems(problems)


def import_decisions(run_dir: Path, source: Path) -> int:
    """Validate decisions from a ``decisions.csv``-style CSV or a Label Studio JSON export and
    append them to the run's ``decisions.csv``; return how many."""
    from labelclean.export.label_studio import read_label_studio_export

    run = Run.open(Path(run_dir))
    source = Path(source)
    if source.suffix.lower() == ".json":
        frame = read_label_studio_export(source)
    else:
        frame = read_table(source)
        absent = S.missing(frame, [S.SAMPLE_ID, "decision", "label"])
        if absent:
            raise DataError(f"{source}: expected columns sample_id, decision, label; "
                            f"missing {', '.join(absent)}")
    scores = run.scores()
    validate_decisions(frame, set(scores[S.SAMPLE_ID]), run.classes, source)
    for _, r in frame.iterrows():
        append_decision(run.path, {c: "" if pd.isna(r.get(c, "")) else str(r.get(c, ""))
                                   for c in S.DECISION_COLUMNS})
    return len(frame)
