"""``report.html``: one self-contained page to look at an audit's suspects.

Everything is embedded (thumbnails as data URIs, data as JSON, plain JavaScript); the page
opens from a file path with no network access. Only the flagged samples with the highest
suspicion get thumbnails (``max_cards``), so a run of 100,000 samples gives a page of a few
megabytes; the grid renders one page of cards at a time. Every label, id and path is escaped:
the server side uses ``html.escape`` and the JSON is made safe for a ``<script>`` block; the
page itself only ever sets ``textContent``, never ``innerHTML``, with data values.
The grid's state lives in the URL hash (``#class=cat&pair=cat->dog&sort=rank&page=2``), so a
view can be shared or bookmarked.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from labelclean.data.images import load_image
from labelclean.io import read_table, write_text
from labelclean.runs import Run

THUMB = 64


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


def _heatmap(transition: pd.DataFrame) -> str:
    classes = [str(c) for c in transition.columns]
    values = transition.to_numpy(dtype=float)
    off = values.copy()
    np.fill_diagonal(off, 0)
    top = max(off.max(), 1e-9)
    e = html.escape
    rows = ['<tr><th class="corner">true \\ given</th>' + "".join(f"<th>{e(c)}</th>" for c in classes) + "</tr>"]
    for i, name in enumerate(classes):
        cells = []
        for j in range(len(classes)):
            v = values[i, j]
            alpha = 0.15 if i == j else min(1.0, v / top)
            colour = f"rgba(46,125,50,{alpha:.3f})" if i == j else f"rgba(198,40,40,{alpha:.3f})"
            cells.append(f'<td style="background:{colour}" title="{e(name)} -> {e(classes[j])}: {v:.3f}">{v:.2f}</td>')
        rows.append(f"<tr><th>{e(name)}</th>{''.join(cells)}</tr>")
    return '<table class="heat">' + "".join(rows) + "</table>"


def build_report(run_dir: Path, out: Path | None = None, max_cards: int = 2000,
                 examples: int = 4) -> Path:
    """Write ``report.html`` for the run in ``run_dir`` (or ``out``); return its path."""
    run = Run.open(Path(run_dir))
    scores = run.scores()
    summary = run.summary
    t_path = run.path / "transition_matrix.csv"
    transition = read_table(t_path).set_index("true\\given") if t_path.is_file() else None
    free = scores[~scores["verified"].astype(bool)]
    flagged = free[free["is_suspect"].astype(bool)].sort_values("suspicion", ascending=False, kind="stable")
    shown = flagged.head(max_cards)
    thumbs: dict[str, str | None] = {}

    def thumb_key(row: pd.Series) -> str:
        key = str(row["sample_id"])
        if key not in thumbs:
            thumbs[key] = _thumbnail(run.image_path(str(row["path"]), key))
        return key

    agree_col = "doubted_by" if "doubted_by" in scores.columns else None
    cards = []
    for _, r in shown.iterrows():
        cards.append({
            "id": str(r["sample_id"]), "path": str(r["path"]), "given": str(r["given_label"]),
            "suggested": str(r["suggested_label"]), "suspicion": round(float(r["suspicion"]), 4),
            "rank": None if pd.isna(r["rank"]) else int(r["rank"]), "action": str(r["action"]),
            "agree": str(r[agree_col]) if agree_col else "", "thumb": thumb_key(r),
        })

    classes = [str(c) for c in summary.get("classes", [])]
    sections = []
    e = html.escape
    for name in classes:
        mine = free[free["given_label"].astype(str) == name]
        rate = summary.get("estimated_noise_rate_per_class", {}).get(name, 0.0)
        pairs = (flagged[flagged["given_label"].astype(str) == name]["suggested_label"].astype(str)
                 .value_counts().head(3))
        parts = [f'<section class="cls"><h3>{e(name)}</h3><p>{len(mine)} samples, '
                 f"{int(mine['is_suspect'].astype(bool).sum())} flagged, estimated noise {rate:.1%}</p>"]
        for other, count in pairs.items():
            side_a = flagged[(flagged["given_label"].astype(str) == name)
                             & (flagged["suggested_label"].astype(str) == other)].head(examples)
            side_b = free[(free["given_label"].astype(str) == other)
                          & ~free["is_suspect"].astype(bool)].sort_values("suspicion").head(examples)
            parts.append(f'<div class="pair"><h4>labelled {e(name)}, looks like {e(other)} ({count})</h4>'
                         '<div class="strip">' + "".join(_img(thumb_key(r), thumbs, r) for _, r in side_a.iterrows())
                         + f'</div><p class="muted">typical {e(other)}:</p><div class="strip">'
                         + "".join(_img(thumb_key(r), thumbs, r) for _, r in side_b.iterrows()) + "</div></div>")
        parts.append("</section>")
        sections.append("".join(parts))

    data = {"cards": cards, "thumbs": {k: v for k, v in thumbs.items() if v}, "classes": classes,
            "flagged": int(len(flagged)), "shown": len(cards)}
    per_class = summary.get("estimated_noise_rate_per_class", {})
    summary_rows = [
        ("method", summary.get("method")), ("samples scored", summary.get("samples_scored")),
        ("verified (trusted)", summary.get("verified")), ("skipped", summary.get("skipped")),
        ("flagged", summary.get("flagged")), ("to relabel", summary.get("relabel")),
        ("to review", summary.get("review")),
        ("estimated noise rate", f"{summary.get('estimated_noise_rate', 0):.1%}"),
        ("flag threshold", f"{summary.get('threshold', 0):.3f} ({summary.get('threshold_method', '')})"),
    ]
    page = TEMPLATE.format(
        title=e(f"labelclean report: {run.path.name}"),
        summary="".join(f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>" for k, v in summary_rows),
        per_class="".join(f"<tr><th>{e(str(k))}</th><td>{float(v):.1%}</td></tr>" for k, v in per_class.items()),
        heatmap=_heatmap(transition) if transition is not None else "<p>no matrix</p>",
        sections="".join(sections),
        data=_safe_json(data),
        notes="".join(f"<li>{e(str(n))}</li>" for n in summary.get("notes", [])),
    )
    dest = Path(out) if out else run.path / "report.html"
    write_text(dest, page)
    return dest


def _img(key: str, thumbs: dict[str, str | None], row: pd.Series) -> str:
    uri = thumbs.get(key)
    label = html.escape(f"{row['sample_id']} ({row['given_label']})")
    if not uri:
        return f'<span class="noimg" title="{label}">?</span>'
    return f'<img src="{uri}" alt="{label}" title="{label}" width="{THUMB}" height="{THUMB}">'


TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }}
h1 {{ font-size: 1.4em; }} table {{ border-collapse: collapse; margin: .5em 0; }}
th, td {{ padding: 2px 8px; text-align: left; }} .muted {{ color: #777; }}
.heat td {{ text-align: right; font-variant-numeric: tabular-nums; border: 1px solid #eee; }}
.controls {{ display: flex; gap: 1em; flex-wrap: wrap; align-items: center; margin: .8em 0; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 10px; }}
.card {{ border: 1px solid #ddd; border-radius: 6px; padding: 6px; background: #fafafa; }}
.card img {{ width: 96px; height: 96px; image-rendering: pixelated; display: block; margin: auto; }}
.card .id {{ font-size: 11px; color: #555; word-break: break-all; }}
.card .lab {{ font-weight: 600; }} .relabel {{ color: #c62828; }} .review {{ color: #ef6c00; }}
.strip img {{ image-rendering: pixelated; margin: 2px; }}
.cls {{ border-top: 1px solid #ddd; margin-top: 1em; }} .noimg {{ display:inline-block; width:64px; height:64px; background:#eee; text-align:center; }}
</style></head><body>
<h1>{title}</h1>
<div style="display:flex; gap:3em; flex-wrap:wrap">
<div><h2>Summary</h2><table>{summary}</table><ul class="muted">{notes}</ul></div>
<div><h2>Estimated noise by class</h2><table>{per_class}</table></div>
<div><h2>Class confusion (rows: true, columns: given)</h2>{heatmap}</div>
</div>
<h2>Suspects</h2>
<p class="muted" id="count"></p>
<div class="controls">
<label>given class <select id="f-class"><option value="">all</option></select></label>
<label>given &rarr; suggested <select id="f-pair"><option value="">all</option></select></label>
<label>sort <select id="f-sort"><option value="suspicion">suspicion (high first)</option>
<option value="rank">rank</option><option value="given">given label</option></select></label>
<button id="prev">&larr; prev</button><span id="page"></span><button id="next">next &rarr;</button>
</div>
<div class="grid" id="grid"></div>
<h2>By class</h2>
{sections}
<script id="report-data" type="application/json">{data}</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("report-data").textContent);
const PER_PAGE = 48;
const state = {{ cls: "", pair: "", sort: "suspicion", page: 1 }};
function el(tag, cls, text) {{
  const n = document.createElement(tag);
  if (cls) n.className = cls;
  if (text !== undefined) n.textContent = text;
  return n;
}}
function readHash() {{
  const p = new URLSearchParams(location.hash.slice(1));
  state.cls = p.get("class") || ""; state.pair = p.get("pair") || "";
  state.sort = p.get("sort") || "suspicion"; state.page = parseInt(p.get("page") || "1", 10) || 1;
}}
function writeHash() {{
  const p = new URLSearchParams();
  if (state.cls) p.set("class", state.cls);
  if (state.pair) p.set("pair", state.pair);
  if (state.sort !== "suspicion") p.set("sort", state.sort);
  if (state.page > 1) p.set("page", String(state.page));
  history.replaceState(null, "", "#" + p.toString());
}}
function options(select, values) {{
  for (const v of values) {{ const o = el("option", "", v); o.value = v; select.appendChild(o); }}
}}
function visible() {{
  let rows = DATA.cards.filter(c => (!state.cls || c.given === state.cls) &&
    (!state.pair || c.given + " -> " + c.suggested === state.pair));
  const by = {{ suspicion: (a, b) => b.suspicion - a.suspicion,
               rank: (a, b) => (a.rank ?? 1e12) - (b.rank ?? 1e12),
               given: (a, b) => a.given.localeCompare(b.given) || b.suspicion - a.suspicion }};
  return rows.sort(by[state.sort] || by.suspicion);
}}
function render() {{
  const rows = visible();
  const pages = Math.max(1, Math.ceil(rows.length / PER_PAGE));
  state.page = Math.min(Math.max(1, state.page), pages);
  const grid = document.getElementById("grid");
  grid.replaceChildren();
  for (const c of rows.slice((state.page - 1) * PER_PAGE, state.page * PER_PAGE)) {{
    const card = el("div", "card");
    card.dataset.given = c.given; card.dataset.suggested = c.suggested;
    const src = DATA.thumbs[c.thumb];
    if (src) {{ const img = el("img"); img.src = src; img.alt = c.id; card.appendChild(img); }}
    card.appendChild(el("div", "lab", c.given + " \\u2192 " + c.suggested));
    card.appendChild(el("div", c.action, c.action + " \\u00b7 suspicion " + c.suspicion.toFixed(3)));
    if (c.agree) card.appendChild(el("div", "muted", "doubted by " + c.agree));
    card.appendChild(el("div", "id", c.id));
    grid.appendChild(card);
  }}
  document.getElementById("page").textContent = " page " + state.page + " of " + pages + " ";
  document.getElementById("count").textContent = rows.length + " of " + DATA.flagged +
    " flagged samples match" + (DATA.shown < DATA.flagged ? " (the " + DATA.shown + " most suspicious are included)" : "");
  document.getElementById("f-class").value = state.cls;
  document.getElementById("f-pair").value = state.pair;
  document.getElementById("f-sort").value = state.sort;
  writeHash();
}}
options(document.getElementById("f-class"), DATA.classes);
options(document.getElementById("f-pair"), [...new Set(DATA.cards.map(c => c.given + " -> " + c.suggested))].sort());
for (const [id, key] of [["f-class", "cls"], ["f-pair", "pair"], ["f-sort", "sort"]]) {{
  document.getElementById(id).addEventListener("change", e => {{ state[key] = e.target.value; state.page = 1; render(); }});
}}
document.getElementById("prev").addEventListener("click", () => {{ state.page -= 1; render(); }});
document.getElementById("next").addEventListener("click", () => {{ state.page += 1; render(); }});
window.addEventListener("hashchange", () => {{ readHash(); render(); }});
readHash(); render();
</script></body></html>
"""
