"""Drawing the rows a team verifies: the random sample the audit's exam needs.

``labelclean sample-trusted DATASET --n N --out to_verify.csv`` writes N rows of the dataset,
stratified by given label (proportional allocation, so the sample keeps the dataset's class
proportions) and random within each class, with their given labels for the team to check and
correct. The audit takes the corrected file as ``--trusted``: half of it becomes the exam
(:mod:`labelclean.exam`), whose intervals hold because the rows were drawn at random.
With ``--format label-studio`` the sample is also written as Label Studio tasks (the given
label pre-filled as the annotation to check); ``--from-label-studio EXPORT`` turns the reviewed
project's JSON export back into the trusted file.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from labelclean.data.dataset import label_text, load_input
from labelclean.errors import ConfigError, DataError
from labelclean.exam import EXAM_SHARE, wilson
from labelclean.io import read_table, write_json, write_table, write_text
from labelclean.run import schema as S


def allocate(counts: np.ndarray, n: int) -> np.ndarray:
    """Proportional allocation of ``n`` draws over strata of ``counts`` (largest remainder)."""
    quota = counts / counts.sum() * n
    take = np.floor(quota).astype(int)
    left = n - take.sum()
    take[np.argsort(-(quota - take), kind="stable")[:left]] += 1
    return np.minimum(take, counts)


def sample_to_verify(dataset: Path, n: int, seed: int = 0, path_column: str = "path",
                     label_column: str = "label", id_column: str | None = None,
                     ) -> tuple[pd.DataFrame, int]:
    """``n`` rows of the dataset (id, path resolved, given label), and the dataset's size."""
    inp = load_input(Path(dataset), path_column, label_column, id_column)
    total = len(inp.frame)
    if not 1 <= n <= total:
        raise ConfigError(f"--n: expected 1 to {total} (the dataset's rows), found {n}")
    labels = np.array([label_text(v) for v in inp.frame[inp.label_column]], dtype=object)
    classes = sorted(set(labels))
    counts = np.array([(labels == c).sum() for c in classes])
    rng = np.random.default_rng([seed, 0x7E57])
    rows: list[int] = []
    for c, k in zip(classes, allocate(counts, n)):
        rows.extend(rng.choice(np.flatnonzero(labels == c), int(k), replace=False).tolist())
    rows.sort()
    frame = pd.DataFrame({
        "id": [inp.ids()[i] for i in rows],
        S.PATH: [inp.abs_paths()[i] for i in rows],
        S.LABEL: labels[rows],
    })
    return frame, total


def interval_width(n_verified: int, rate: float, share: float = EXAM_SHARE) -> float:
    """Width of the exam's 90% noise-rate interval that ``n_verified`` rows buy at ``rate``."""
    exam = math.floor(share * n_verified)
    _, lo, hi = wilson(round(rate * exam), exam)
    return hi - lo


def write_sample(frame: pd.DataFrame, out: Path, label_studio: bool = False) -> list[Path]:
    """The sample as a CSV whose paths resolve from its folder (and Label Studio tasks)."""
    out = Path(out)
    table = frame.copy()
    here = out.parent.resolve()
    table[S.PATH] = [Path(os.path.relpath(p, here)).as_posix() for p in table[S.PATH]]
    written = [write_table(out, table)]
    if label_studio:
        from labelclean.export.label_studio import _choice, label_studio_config, storage_layout

        layout = storage_layout(frame[S.PATH].tolist())
        tasks: list[dict[str, Any]] = [{
            "data": {"image": layout.reference(Path(p)), S.SAMPLE_ID: sid, S.GIVEN: label},
            "annotations": [{"result": _choice(label), "ground_truth": False}],
        } for sid, p, label in zip(frame["id"], frame[S.PATH], frame[S.LABEL])]
        tasks_path = out.with_name(out.stem + "-label-studio.json")
        written.append(write_json(tasks_path, tasks))
        classes = sorted(set(map(str, frame[S.LABEL])))
        written.append(write_text(tasks_path.with_name(tasks_path.stem + "-config.xml"),
                                  label_studio_config(classes) + "\n"))
    return written


def trusted_from_label_studio(sample: Path, export: Path, out: Path) -> tuple[int, int]:
    """The trusted file from a sample and the reviewed Label Studio export of its tasks.

    Returns (rows written, rows whose label the reviewers changed). Rows nobody reviewed are
    left out: they are not verified."""
    from labelclean.export.label_studio import read_label_studio_export

    drawn = read_table(sample)
    drawn[S.PATH] = [os.path.normpath(Path(sample).parent.resolve() / p) for p in drawn[S.PATH]]
    decisions = read_label_studio_export(export).drop_duplicates(S.SAMPLE_ID, keep="last")
    unknown = sorted(set(decisions[S.SAMPLE_ID]) - set(drawn["id"].astype(str)))
    if unknown:
        raise DataError(f"{export}: task {unknown[0]!r} is not in {sample}")
    by_id = decisions.set_index(S.SAMPLE_ID)["label"]
    kept = drawn[drawn["id"].astype(str).isin(by_id.index)].copy()
    changed = int((kept[S.LABEL].astype(str) != kept["id"].astype(str).map(by_id)).sum())
    kept[S.LABEL] = kept["id"].astype(str).map(by_id)
    here = Path(out).parent.resolve()
    kept[S.PATH] = [Path(os.path.relpath(p, here)).as_posix() for p in kept[S.PATH]]
    write_table(out, kept)
    return len(kept), changed
