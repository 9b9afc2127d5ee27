"""``export``: corrected label files from a run, ready to audit again or to send to annotators."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from labelclean.data.dataset import label_text, load_input
from labelclean.decisions import load_decisions
from labelclean.errors import ConfigError, DataError
from labelclean.io import read_table, write_json, write_table, write_text
from labelclean.outputs import EXPORT_FORMATS, apply_policy, rewrite_paths, write_manifest
from labelclean.runs import Run

LS_PREFIX = "/data/local-files/?d="


def _run_ids(run: Run, rows: int) -> list[str]:
    """Sample ids of the corrected manifest's ``rows`` rows, in order (from the unchanged input)."""
    c = run.config
    inp = load_input(Path(c.dataset), c.path_column, c.label_column, c.id_column)
    ids = inp.ids()
    if len(ids) != rows:
        raise DataError(f"{c.dataset}: the input changed since the audit "
                        f"({len(ids)} rows now, {rows} then); audit it again")
    return ids


def export_labels(
    run_dir: Path,
    fmt: str | None = None,
    policy: str = "relabel",
    threshold: float | None = None,
    dest: Path | None = None,
    decisions: bool = False,
    promote_trusted: Path | None = None,
) -> tuple[Path, int, int]:
    """Write the run's corrected manifest under ``policy``; return (path, rows changed, rows).

    The format defaults to the input's (CSV for image folders). Relative image paths are
    rewritten so they resolve from the written file's folder. With ``decisions``, reviewers'
    decisions (``decisions.csv``) win over the model's suggestions, and ``changes.csv`` lists
    every changed label with who decided and when. ``promote_trusted`` adds reviewed labels
    to a trusted file for the next audit.
    """
    run = Run.open(Path(run_dir))
    kind = run.summary.get("input_kind", "csv")
    fmt = fmt or ("parquet" if kind == "parquet" else "csv")
    if fmt == "label-studio":
        return export_label_studio(run, dest)
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"--format: expected one of {', '.join(EXPORT_FORMATS)}, label-studio; found {fmt!r}")
    if threshold is not None and not 0 < threshold < 1:
        raise ConfigError(f"--threshold: expected a value in (0, 1), found {threshold}")
    label_column = "label" if kind == "folder" else run.config.label_column
    path_column = "path" if kind == "folder" else run.config.path_column
    corrected = run.corrected()
    values = run.label_values(corrected)
    frame, changed = apply_policy(corrected, label_column, policy, threshold, values)
    dest = Path(dest) if dest else run.path / f"labels-{policy}.{fmt}"
    inputs = {Path(p).resolve() for p in (run.config.dataset, run.config.trusted) if p}
    if dest.resolve() in inputs or (promote_trusted and Path(promote_trusted).resolve() == Path(run.config.dataset).resolve()):
        raise ConfigError(f"--out {dest}: would overwrite an input file of the audit; choose another path")
    if decisions or promote_trusted:
        ids = _run_ids(run, len(corrected))
        decided = load_decisions(run.path)
        decided = decided[decided["decision"] != "skip"].set_index("sample_id")
        if decisions:
            if policy == "drop":
                raise ConfigError("--decisions applies labels; use it with --policy relabel or flag")
            frame, changed = _apply_decisions(run, frame, corrected, ids, decided, label_column, values)
        if promote_trusted:
            _promote(run, corrected, ids, decided, path_column, Path(promote_trusted))
    frame[path_column] = rewrite_paths(frame[path_column].astype(object), run.path, dest.parent)
    write_manifest(frame, dest, fmt)
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
            changes.append({"sample_id": sid, "old_label": old[i], "new_label": new,
                            "decided_by": who, "decided_at": when})
    table = pd.DataFrame(changes, columns=["sample_id", "old_label", "new_label", "decided_by", "decided_at"])
    write_table(run.path / "changes.csv", table)
    return frame, len(changes)


def _promote(run: Run, corrected: pd.DataFrame, ids: list[str], decided: pd.DataFrame,
             path_column: str, target: Path) -> None:
    """Add reviewed labels (path, label) to a trusted file; later decisions replace earlier."""
    rows = []
    paths = corrected[path_column].tolist()
    for i, sid in enumerate(ids):
        if sid in decided.index:
            p = paths[i]
            abs_path = p if os.path.isabs(p) else os.path.normpath(run.path / p)
            rel = Path(os.path.relpath(abs_path, target.parent.resolve())).as_posix()
            rows.append({"path": rel, "label": str(decided.loc[sid, "label"])})
    new = pd.DataFrame(rows, columns=["path", "label"])
    if target.exists():
        old = read_table(target)
        if not {"path", "label"} <= set(old.columns):
            raise DataError(f"{target}: expected a trusted file with path and label columns")
        new = pd.concat([old[["path", "label"]].astype(str), new]).drop_duplicates("path", keep="last")
    write_table(target, new.reset_index(drop=True))


@dataclass(frozen=True)
class LocalFiles:
    """Where Label Studio finds the images: ``document_root`` is its
    ``LOCAL_FILES_DOCUMENT_ROOT``, ``storage`` the path of the project's Local Files storage (a
    folder below the root: Label Studio refuses the root itself and serves a file only under a
    project's storage). Task images are ``/data/local-files/?d=<path from document_root>``."""

    document_root: Path
    storage: Path

    def reference(self, image: Path) -> str:
        return LS_PREFIX + Path(os.path.relpath(image, self.document_root)).as_posix()


def local_files(run: Run, scores: pd.DataFrame | None = None) -> LocalFiles:
    """The Label Studio local-files layout for a run: the storage is the folder holding all its
    images, the document root that folder's parent."""
    scores = run.scores() if scores is None else scores
    images = [run.image_path(str(p), str(i)) for p, i in zip(scores["path"], scores["sample_id"])]
    storage = Path(os.path.commonpath([os.path.dirname(p) for p in images])) if images else Path("/")
    if storage.parent == storage:
        raise DataError(f"{run.config.dataset}: the images share no folder below {storage}; Label "
                        "Studio needs them under one folder (its Local Files storage)")
    return LocalFiles(storage.parent, storage)


def export_label_studio(run: Run, dest: Path | None) -> tuple[Path, int, int]:
    """One Label Studio task per suspect: the given label as the annotation to review and the
    suggestion as a scored prediction, for the image-classification template
    (``<Choices name="choice" toName="image">``), whose config is written beside the tasks as
    ``<name>-config.xml``. Images are referenced through Label Studio's local-file serving
    (:class:`LocalFiles`): start it with ``LOCAL_FILES_SERVING_ENABLED=true`` and
    ``LOCAL_FILES_DOCUMENT_ROOT`` at the images' parent folder, and add a Local Files storage
    at the images' folder to the project (do not sync it: the tasks come from this file)."""
    scores = run.scores()
    layout = local_files(run, scores)
    suspects = scores[scores["is_suspect"].astype(bool) & ~scores["verified"].astype(bool)]
    suspects = suspects.sort_values("suspicion", ascending=False, kind="stable")

    def choice(label: str) -> list[dict[str, Any]]:
        return [{"from_name": "choice", "to_name": "image", "type": "choices",
                 "value": {"choices": [label]}}]

    tasks = []
    for _, r in suspects.iterrows():
        image = run.image_path(str(r["path"]), str(r["sample_id"]))
        tasks.append({
            "data": {"image": layout.reference(Path(image)),
                     "sample_id": str(r["sample_id"]), "given_label": str(r["given_label"]),
                     "suggested_label": str(r["suggested_label"]),
                     "suspicion": float(r["suspicion"])},
            "annotations": [{"result": choice(str(r["given_label"])), "ground_truth": False}],
            "predictions": [{"model_version": "labelclean", "score": float(r["suspicion"]),
                             "result": choice(str(r["suggested_label"]))}],
        })
    dest = Path(dest) if dest else run.path / "label-studio-tasks.json"
    write_json(dest, tasks)
    classes = [str(c) for c in run.summary.get("classes", [])]
    write_text(dest.with_name(dest.stem + "-config.xml"), label_studio_config(classes) + "\n")
    return dest, len(tasks), len(scores)


def label_studio_config(classes: list[str]) -> str:
    """The image-classification labelling config the exported tasks fit."""
    from html import escape

    choices = "".join(f'<Choice value="{escape(c, quote=True)}"/>' for c in classes)
    return (f'<View><Image name="image" value="$image"/>'
            f'<Choices name="choice" toName="image" choice="single">{choices}</Choices></View>')


def read_label_studio_export(path: Path) -> pd.DataFrame:
    """Decisions from a Label Studio JSON export: the latest reviewed annotation of each task.

    Annotations still as imported (``updated_by`` empty) are skipped; the reviewer is whoever
    last updated the annotation (``label-studio:<user id>`` where the export has only ids)."""
    try:
        tasks = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: expected a Label Studio JSON export: {exc}") from None
    if not isinstance(tasks, list):
        raise DataError(f"{path}: expected a JSON list of tasks, found {type(tasks).__name__}")
    rows = []
    for n, task in enumerate(tasks, 1):
        data = task.get("data", {}) if isinstance(task, dict) else {}
        sid = data.get("sample_id")
        if sid is None:
            raise DataError(f"{path} task {n}: no data.sample_id (was it exported by labelclean?)")
        # An annotation nobody touched since import (Label Studio leaves ``updated_by`` empty)
        # is the given label labelclean sent for review, not a decision.
        annotations = [a for a in task.get("annotations", []) if isinstance(a, dict)
                       and not a.get("was_cancelled") and not ("updated_by" in a and a["updated_by"] is None)]
        if not annotations:
            continue
        latest = max(annotations, key=lambda a: str(a.get("updated_at") or a.get("created_at") or ""))
        labels = [c for r in latest.get("result", []) if r.get("type") == "choices"
                  for c in r.get("value", {}).get("choices", [])]
        if not labels:
            continue
        label = str(labels[0])
        given, suggested = str(data.get("given_label", "")), str(data.get("suggested_label", ""))
        decision = "keep" if label == given else "accept" if label == suggested else "relabel"
        who = latest.get("updated_by") or latest.get("completed_by")
        if isinstance(who, dict):
            who = who.get("email") or who.get("id")
        if isinstance(who, int):  # current exports carry user ids, not names
            who = f"label-studio:{who}"
        rows.append({"sample_id": str(sid), "given_label": given, "decision": decision,
                     "label": label, "reviewer": str(who or "label-studio"),
                     "decided_at": str(latest.get("updated_at") or latest.get("created_at") or "")})
    return pd.DataFrame(rows, columns=["sample_id", "given_label", "decision", "label", "reviewer", "decided_at"])


def import_decisions(run_dir: Path, source: Path) -> int:
    """Validate decisions from ``decisions.csv``-style CSV or a Label Studio JSON export and
    append them to the run's ``decisions.csv``; return how many."""
    from labelclean.decisions import COLUMNS, append_decision, validate_decisions

    run = Run.open(Path(run_dir))
    source = Path(source)
    if source.suffix.lower() == ".json":
        frame = read_label_studio_export(source)
    else:
        frame = read_table(source)
        missing = [c for c in ("sample_id", "decision", "label") if c not in frame.columns]
        if missing:
            raise DataError(f"{source}: expected columns sample_id, decision, label; missing {', '.join(missing)}")
    scores = run.scores()
    validate_decisions(frame, set(scores["sample_id"].astype(str)), [str(c) for c in run.summary.get("classes", [])], source)
    for _, r in frame.iterrows():
        append_decision(run.path, {c: str(r.get(c, "")) if not pd.isna(r.get(c, "")) else "" for c in COLUMNS})
    return len(frame)
