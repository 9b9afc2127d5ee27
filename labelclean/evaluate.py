"""``evaluate``: compare a run's scores and suggestions with known true labels.

Trusted (verified) samples are excluded: their labels are known, not detected. Every scored
sample must have a truth row and every truth row must be a sample of the run (or listed in its
``skipped.csv``); anything else is an error, never silently dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from labelclean.data.dataset import label_text
from labelclean.errors import DataError
from labelclean.io import read_table, write_json
from labelclean.metrics import detection_metrics
from labelclean.run import schema as S
from labelclean.run.folder import Run

ID_CANDIDATES = (S.SAMPLE_ID, "id", "folder_id", "path")


def _match_column(truth: pd.DataFrame, ids: set[str], id_column: str | None, source: Path) -> str:
    candidates = [id_column] if id_column else [c for c in ID_CANDIDATES if c in truth.columns]
    if id_column and id_column not in truth.columns:
        raise DataError(f"{source}: expected id column {id_column!r}, found {', '.join(truth.columns)}")
    best, best_missing = None, None
    for column in candidates:
        missing = ids - set(truth[column].astype(str))
        if not missing:
            return column
        if best_missing is None or len(missing) < len(best_missing):
            best, best_missing = column, missing
    if best is None or best_missing is None:
        raise DataError(f"{source}: expected an id column ({', '.join(ID_CANDIDATES)}), found "
                        f"{', '.join(map(str, truth.columns))}")
    example = ", ".join(sorted(best_missing)[:3])
    raise DataError(
        f"{source}: {len(best_missing)} sample id(s) of the run have no truth row in column "
        f"{best!r} (e.g. {example}); pass --id-column to choose the matching column"
    )


def evaluate_run(
    run_dir: Path, truth_path: Path, id_column: str | None = None, label_column: str = "label"
) -> dict[str, Any]:
    """Detection and correction metrics of a run against ``truth_path``; writes evaluation.json."""
    run = Run.open(Path(run_dir))
    scores = run.scores()
    truth = read_table(Path(truth_path))
    if label_column not in truth.columns:
        raise DataError(f"{truth_path}: expected a {label_column!r} column with true labels, "
                        f"found {', '.join(map(str, truth.columns))}")
    scored = scores[~scores[S.VERIFIED]]
    column = _match_column(truth, set(scored[S.SAMPLE_ID]), id_column, Path(truth_path))
    keys = truth[column].astype(str)
    dup = keys[keys.duplicated()]
    if len(dup):
        raise DataError(f"{truth_path}: duplicate id {dup.iloc[0]!r} in column {column!r}")
    skipped_path = run.path / "skipped.csv"
    skipped = set(read_table(skipped_path)[S.SAMPLE_ID].astype(str)) if skipped_path.is_file() else set()
    extra = set(keys) - set(scores[S.SAMPLE_ID]) - skipped
    if extra:
        raise DataError(
            f"{truth_path}: {len(extra)} truth id(s) are not samples of the run "
            f"(e.g. {', '.join(sorted(extra)[:3])}); is this the truth for this dataset?"
        )
    true = truth.assign(_k=keys).set_index("_k")[label_column].map(label_text)
    given = scored[S.GIVEN].map(label_text).to_numpy()
    suggested = scored[S.SUGGESTED].map(label_text).to_numpy()
    y = true.loc[scored[S.SAMPLE_ID]].to_numpy()
    wrong = given != y
    flagged = scored[S.IS_SUSPECT].to_numpy(dtype=bool)
    suspicion = scored[S.SUSPICION].to_numpy(dtype=np.float64)
    relabel = (scored[S.ACTION] == "relabel").to_numpy()
    after = np.where(relabel, suggested, given)
    result: dict[str, Any] = {
        "run": str(run.path),
        "truth": str(truth_path),
        "samples": len(scored),
        "excluded_verified": int(len(scores) - len(scored)),
        **detection_metrics(suspicion, flagged, wrong),
        "suggestion_accuracy_on_errors": _mean(suggested[wrong] == y[wrong]),
        "label_accuracy_before": _mean(given == y),
        "label_accuracy_after_relabel": _mean(after == y),
        "relabelled": int(relabel.sum()),
        "per_class": {},
    }
    for name in sorted(set(given), key=str):
        mask = given == name
        m = detection_metrics(suspicion[mask], flagged[mask], wrong[mask])
        result["per_class"][name] = {
            **m,
            "label_accuracy_before": _mean(given[mask] == y[mask]),
            "label_accuracy_after_relabel": _mean(after[mask] == y[mask]),
        }
    write_json(run.path / "evaluation.json", result)
    return result


def _mean(mask: np.ndarray) -> float:
    return float(np.mean(mask)) if len(mask) else float("nan")
