"""Label Studio, both ways: tasks out (one per suspect) and its JSON export back in."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

import pandas as pd

from labelclean.errors import DataError
from labelclean.io import write_json, write_text
from labelclean.run import schema as S
from labelclean.run.folder import Run

LS_PREFIX = "/data/local-files/?d="


@dataclass(frozen=True)
class LocalFiles:
    """Where Label Studio finds the images: ``document_root`` is its
    ``LOCAL_FILES_DOCUMENT_ROOT``, ``storages`` the paths of the project's Local Files storages
    (folders below the root: Label Studio refuses the root itself and serves a file only under
    one of a project's storages). Task images are ``/data/local-files/?d=<path from root>``."""

    document_root: Path
    storages: tuple[Path, ...]

    def reference(self, image: Path) -> str:
        return LS_PREFIX + Path(os.path.relpath(image, self.document_root)).as_posix()


def storage_layout(images: list[str]) -> LocalFiles:
    """One storage at the folder holding every image, the document root its parent; images in
    trees that share no folder below ``/`` (``/data/...`` and ``/mnt/...``) get one storage per
    tree (the folder holding that tree's images) under the document root ``/``."""
    dirs = sorted({os.path.dirname(os.path.abspath(p)) for p in images}) or [os.sep]
    common = Path(os.path.commonpath(dirs))
    if common.parent != common:
        return LocalFiles(common.parent, (common,))
    trees: dict[str, list[str]] = {}
    for d in dirs:
        parts = Path(d).parts
        trees.setdefault(parts[1] if len(parts) > 1 else "", []).append(d)
    if "" in trees:
        raise DataError(f"images stored directly in {common} (for example {images[0]}): Label "
                        "Studio serves local files only from a folder below its document root")
    return LocalFiles(common, tuple(Path(os.path.commonpath(v)) for v in trees.values()))


def local_files(run: Run, scores: pd.DataFrame | None = None) -> LocalFiles:
    """The Label Studio local-files layout for a run's images (:func:`storage_layout`)."""
    scores = run.scores() if scores is None else scores
    return storage_layout(scores[S.IMAGE_PATH].tolist())


def _choice(label: str) -> list[dict[str, Any]]:
    return [{"from_name": "choice", "to_name": "image", "type": "choices",
             "value": {"choices": [label]}}]


def export_label_studio(run: Run, dest: Path | None) -> tuple[Path, int, int]:
    """One Label Studio task per suspect: the given label as the annotation to review and the
    suggestion as a scored prediction, for the image-classification template
    (``<Choices name="choice" toName="image">``), whose config is written beside the tasks as
    ``<name>-config.xml``. Images are referenced through Label Studio's local-file serving
    (:class:`LocalFiles`): start it with ``LOCAL_FILES_SERVING_ENABLED=true`` and
    ``LOCAL_FILES_DOCUMENT_ROOT`` at the layout's document root, and add a Local Files storage
    for each of its storage folders to the project (do not sync them: the tasks come from this
    file)."""
    scores = run.scores()
    layout = local_files(run, scores)
    tasks = []
    for _, r in run.suspects(scores).iterrows():
        tasks.append({
            "data": {"image": layout.reference(Path(r[S.IMAGE_PATH])),
                     S.SAMPLE_ID: r[S.SAMPLE_ID], S.GIVEN: r[S.GIVEN],
                     S.SUGGESTED: r[S.SUGGESTED], S.SUSPICION: float(r[S.SUSPICION])},
            "annotations": [{"result": _choice(r[S.GIVEN]), "ground_truth": False}],
            "predictions": [{"model_version": "labelclean", "score": float(r[S.SUSPICION]),
                             "result": _choice(r[S.SUGGESTED])}],
        })
    dest = Path(dest) if dest else run.path / "label-studio-tasks.json"
    write_json(dest, tasks)
    write_text(dest.with_name(dest.stem + "-config.xml"), label_studio_config(run.classes) + "\n")
    return dest, len(tasks), len(scores)


def label_studio_config(classes: list[str]) -> str:
    """The image-classification labelling config the exported tasks fit."""
    choices = "".join(f'<Choice value="{escape(c, quote=True)}"/>' for c in classes)
    return (f'<View><Image name="image" value="$image"/>'
            f'<Choices name="choice" toName="image" choice="single">{choices}</Choices></View>')


def _reviewed(annotation: object) -> bool:
    """Whether an annotation is a person's decision.

    The given label labelclean sends for review is not: in labelclean's own tasks file it has
    no author at all, and after an import into Label Studio nobody has updated it
    (``updated_by`` empty). Cancelled (skipped) annotations are not decisions either.
    """
    if not isinstance(annotation, dict) or annotation.get("was_cancelled"):
        return False
    if "updated_by" in annotation:
        return bool(annotation["updated_by"])
    return bool(annotation.get("completed_by"))


def read_label_studio_export(path: Path) -> pd.DataFrame:
    """Decisions from a Label Studio JSON export: the latest reviewed annotation of each task.

    Annotations still as imported (``updated_by`` empty) are skipped; the reviewer is whoever
    last updated the annotation (``label-studio:<user id>`` where the export has only ids)."""
    try:
        tasks = json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DataError(f"{path}: expected a UTF-8 Label Studio JSON export, found binary or "
                        "another encoding") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: expected a Label Studio JSON export: {exc}") from None
    if not isinstance(tasks, list):
        raise DataError(f"{path}: expected a JSON list of tasks, found {type(tasks).__name__}")
    rows = []
    for n, task in enumerate(tasks, 1):
        data = task.get("data", {}) if isinstance(task, dict) else {}
        sid = data.get(S.SAMPLE_ID)
        if sid is None:
            raise DataError(f"{path} task {n}: no data.sample_id (was it exported by labelclean?)")
        found = task.get("annotations") if isinstance(task, dict) else None
        annotations = [a for a in (found if isinstance(found, list) else []) if _reviewed(a)]
        if not annotations:
            continue
        latest = max(annotations, key=lambda a: str(a.get("updated_at") or a.get("created_at") or ""))
        results = latest.get("result") if isinstance(latest.get("result"), list) else []
        labels = [c for r in results if isinstance(r, dict) and r.get("type") == "choices"
                  and isinstance(r.get("value"), dict)
                  for c in (r["value"].get("choices") or [])]
        if not labels:
            continue
        label = str(labels[0])
        given, suggested = str(data.get(S.GIVEN, "")), str(data.get(S.SUGGESTED, ""))
        decision = "keep" if label == given else "accept" if label == suggested else "relabel"
        who = latest.get("updated_by") or latest.get("completed_by")
        if isinstance(who, dict):
            who = who.get("email") or who.get("id")
        if isinstance(who, int):  # current exports carry user ids, not names
            who = f"label-studio:{who}"
        rows.append({S.SAMPLE_ID: str(sid), S.GIVEN: given, "decision": decision,
                     "label": label, "reviewer": str(who or "label-studio"),
                     "decided_at": str(latest.get("updated_at") or latest.get("created_at") or "")})
    return pd.DataFrame(rows, columns=S.DECISION_COLUMNS)
