"""``report.html``: one self-contained page to look at an audit's suspects.

Everything is embedded (thumbnails as data URIs, data as JSON, plain JavaScript); the page
opens from a file path with no network access. Only the flagged samples with the highest
suspicion get thumbnails (``max_cards``), so a run of 100,000 samples gives a page of a few
megabytes; the grid renders one page of cards at a time. The page is the package template
``templates/report.html.j2``, rendered by Jinja2 with autoescape, so every label, id and path
is text; the JSON data block is made safe for a ``<script>`` element by :func:`_safe_json`, and
the page's script only ever sets ``textContent`` with data values. The grid's state lives in
the URL hash (``#class=cat&pair=cat->dog&sort=rank&page=2``), so a view can be shared.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from labelclean.data.images import load_image
from labelclean.exam import estimate_lines, noise_rate_text
from labelclean.io import read_table, write_text
from labelclean.run import schema as S
from labelclean.run.folder import Run

THUMB = 64
#: Opacity range of off-diagonal heatmap cells: the smallest off-diagonal value gets the low
#: end and the largest the high end, so differences between confusions stay visible.
HEAT_ALPHA = (0.05, 0.9)
DIAGONAL_ALPHA = 0.15
#: Classes drawn in the confusion heatmap; with more, those with the most confusion (a
#: thousand classes would be a million cells, a 100 MB page).
HEAT_MAX_CLASSES = 40
#: Per-class sections; with more classes, those with the most flagged rows.
SECTION_MAX_CLASSES = 100


def _thumbnail(path: str) -> str | None:
    try:
        arr = load_image(path, THUMB)
    except (OSError, ValueError, SyntaxError):
        return None
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _safe_json(obj: Any) -> str:
    """JSON that cannot close its ``<script>`` block or start markup."""
    text = json.dumps(obj, ensure_ascii=False, default=str)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def heat_alpha(values: np.ndarray) -> np.ndarray:
    """Opacity of each cell: off-diagonal cells spread over :data:`HEAT_ALPHA` between the
    smallest and largest off-diagonal value; diagonal cells a fixed light tint."""
    values = np.asarray(values, dtype=float)
    off = ~np.eye(len(values), dtype=bool)
    lo, hi = (values[off].min(), values[off].max()) if off.any() else (0.0, 0.0)
    span = hi - lo
    scaled = (values - lo) / span if span > 0 else np.zeros_like(values)
    alpha = HEAT_ALPHA[0] + (HEAT_ALPHA[1] - HEAT_ALPHA[0]) * scaled
    return np.where(off, alpha, DIAGONAL_ALPHA)


def most_confused(values: np.ndarray, limit: int) -> np.ndarray:
    """Indices (in order) of the ``limit`` classes with the most off-diagonal mass, as row
    and as column; all of them when there are no more than ``limit``."""
    if len(values) <= limit:
        return np.arange(len(values))
    off = np.array(values, dtype=float)
    np.fill_diagonal(off, 0.0)
    return np.sort(np.argsort(-(off.sum(0) + off.sum(1)), kind="stable")[:limit])


def _heat(transition: pd.DataFrame) -> dict[str, Any]:
    classes = [str(c) for c in transition.columns]
    values = transition.to_numpy(dtype=float)
    keep = most_confused(values, HEAT_MAX_CLASSES)
    note = "" if len(keep) == len(classes) else (
        f"the {len(keep)} of {len(classes):,} classes with the most confusion; every class is in "
        "transition_matrix.csv")
    values, classes = values[np.ix_(keep, keep)], [classes[k] for k in keep]
    alpha = heat_alpha(values)
    rows = []
    for i, name in enumerate(classes):
        cells = []
        for j, other in enumerate(classes):
            hue = "46,125,50" if i == j else "198,40,40"
            # Row: true class, column: given label; the grid's pairs read "given -> suggested".
            cells.append({"value": values[i, j], "colour": f"rgba({hue},{alpha[i, j]:.3f})",
                          "title": f"{name} -> {other}: {values[i, j]:.4f}",
                          "pair": "" if i == j else f"{other} -> {name}"})
        rows.append({"name": name, "cells": cells})
    return {"classes": classes, "rows": rows, "note": note}


def _environment() -> Any:
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    return Environment(loader=PackageLoader("labelclean.review", "templates"),
                       autoescape=select_autoescape(["html", "j2"], default=True),
                       undefined=StrictUndefined, keep_trailing_newline=True)


def build_report(run_dir: Path, out: Path | None = None, max_cards: int = 2000,
                 examples: int = 4) -> Path:
    """Write ``report.html`` for the run in ``run_dir`` (or ``out``); return its path."""
    run = Run.open(Path(run_dir))
    scores = run.scores()
    summary = run.summary
    t_path = run.path / "transition_matrix.csv"
    transition = read_table(t_path).set_index(S.TRANSITION_INDEX) if t_path.is_file() else None
    free = scores[~scores[S.VERIFIED]]
    flagged = run.suspects(scores)
    shown = flagged.head(max(0, max_cards))
    thumbs: dict[str, str | None] = {}

    def thumb_key(row: pd.Series) -> str:
        key = str(row[S.SAMPLE_ID])
        if key not in thumbs:
            thumbs[key] = _thumbnail(row[S.IMAGE_PATH])
        return key

    def image(row: pd.Series) -> dict[str, Any]:
        return {"uri": thumbs.get(thumb_key(row)), "label": f"{row[S.SAMPLE_ID]} ({row[S.GIVEN]})"}

    doubted = S.DOUBTED_BY in scores.columns
    cards = []
    for _, r in shown.iterrows():
        cards.append({
            "id": r[S.SAMPLE_ID], "path": r[S.PATH], "given": r[S.GIVEN],
            "suggested": r[S.SUGGESTED], S.SUSPICION: round(float(r[S.SUSPICION]), 4),
            S.P_WRONG: round(float(r[S.P_WRONG]), 4),
            S.RANK: None if pd.isna(r[S.RANK]) else int(r[S.RANK]), S.ACTION: r[S.ACTION],
            "agree": str(r[S.DOUBTED_BY]) if doubted else "", "thumb": thumb_key(r),
            "src": Path(str(r[S.IMAGE_PATH])).as_uri() if str(r[S.IMAGE_PATH]).startswith("/") else "",
        })

    # Rows grouped by given class once (a filter per class is N x C comparisons: minutes at a
    # million rows and a thousand classes). Typical examples: the least suspicious unverified
    # rows of a class, else verified ones, shown beside an enlarged card.
    counts = free[S.GIVEN].value_counts()
    flagged_by = dict(tuple(flagged.groupby(S.GIVEN, sort=False)))
    pool = pd.concat([free.sort_values(S.SUSPICION, kind="stable"), scores[scores[S.VERIFIED]]])
    pool_by = dict(tuple(pool[~pool[S.IS_SUSPECT]].groupby(S.GIVEN, sort=False)))
    names = list(run.classes)
    if len(names) > SECTION_MAX_CLASSES:
        top = set(sorted(names, key=lambda n: -len(flagged_by.get(n, ())))[:SECTION_MAX_CLASSES])
        names = [n for n in names if n in top]
    shown_classes = set(names) | set(map(str, shown[S.GIVEN])) | set(map(str, shown[S.SUGGESTED]))
    typical: dict[str, list[str]] = {}
    for name in run.classes:
        if name in shown_classes and name in pool_by:
            typical[name] = [thumb_key(r) for _, r in pool_by[name].head(examples).iterrows()]

    rates = summary.get("estimated_noise_rate_per_class", {})
    sections = []
    for name in names:
        theirs = flagged_by.get(name, flagged.iloc[:0])
        pairs = []
        for other, count in theirs[S.SUGGESTED].value_counts().head(3).items():
            side_a = theirs[theirs[S.SUGGESTED] == other].head(examples)
            side_b = pool_by[other].head(examples) if other in pool_by else pool.iloc[:0]
            side_b = side_b[~side_b[S.VERIFIED]]  # typical *unverified* rows, as before
            pairs.append({"other": other, "count": int(count),
                          "side_a": [image(r) for _, r in side_a.iterrows()],
                          "side_b": [image(r) for _, r in side_b.iterrows()]})
        sections.append({"name": name, "count": int(counts.get(name, 0)), "flagged": len(theirs),
                         "rate": float(rates.get(name, 0.0)), "pairs": pairs})
    sections_note = "" if len(names) == len(run.classes) else (
        f"the {len(names)} of {len(run.classes):,} classes with the most flagged rows; "
        "scores.csv has every row")

    data = {"cards": cards, "thumbs": {k: v for k, v in thumbs.items() if v}, "classes": run.classes,
            "flagged": len(flagged), "shown": len(cards), "typical": typical,
            "run": run.path.name, "decision_columns": S.DECISION_COLUMNS}
    summary_rows = [
        ("method", summary.get("method")), ("samples scored", summary.get("samples_scored")),
        ("verified (trusted)", summary.get("verified")), ("skipped", summary.get("skipped")),
        ("flagged", summary.get("flagged")), ("to relabel", summary.get("relabel")),
        ("to review", summary.get("review")),
        ("estimated noise rate", noise_rate_text(summary)),
        ("flag threshold", f"{summary.get('threshold', 0):.3f} ({summary.get('threshold_method', '')})"),
    ]
    page = _environment().get_template("report.html.j2").render(
        title=f"labelclean report: {run.path.name}", summary=summary_rows,
        per_class=[(str(k), float(v)) for k, v in rates.items()],
        heat=_heat(transition) if transition is not None else None, sections=sections,
        sections_note=sections_note,
        data=_safe_json(data), notes=[str(n) for n in summary.get("notes", [])], size=THUMB,
        estimates=estimate_lines(summary),
    )
    dest = Path(out) if out else run.path / "report.html"
    write_text(dest, page)
    return dest
