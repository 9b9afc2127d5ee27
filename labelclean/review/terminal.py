"""Terminal rendering of audit results and suspect lists (Rich).

Every user string (ids, labels, paths) is printed as plain text, never parsed as Rich markup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from labelclean.exam import estimate_lines, noise_rate_text
from labelclean.run import schema as S
from labelclean.run.folder import Run

if TYPE_CHECKING:
    from labelclean.pipeline import AuditResult

def print_suspects(console: Console, rows: pd.DataFrame, title: str) -> None:
    """A table of suspects in the order given (rank order from :meth:`Run.suspects`)."""
    table = Table(title=escape(title), title_justify="left")
    width = int(rows[S.SAMPLE_ID].str.len().max()) if len(rows) else 9
    table.add_column("rank", justify="right", no_wrap=True)
    table.add_column(S.SAMPLE_ID, min_width=min(width, 32), overflow="fold")
    for name in ("given", "suggested"):
        table.add_column(name, overflow="fold")
    table.add_column(S.P_WRONG, justify="right", no_wrap=True)
    table.add_column(S.SUSPICION, justify="right", no_wrap=True)
    table.add_column(S.ACTION, no_wrap=True)
    combined = S.DOUBTED_BY in rows.columns
    evidence = [] if combined else S.evidence_columns(rows)
    for c in evidence:
        table.add_column(c.removesuffix(S.EVIDENCE_SUFFIX), justify="right")
    if combined:
        table.add_column("doubted by", overflow="fold")
    for _, r in rows.iterrows():
        extra = [f"{r[c]:.4f}" for c in evidence]
        if combined:
            extra.append(escape(str(r[S.DOUBTED_BY]) or "-"))
        table.add_row(
            "" if pd.isna(r[S.RANK]) else str(int(r[S.RANK])), escape(r[S.SAMPLE_ID]),
            escape(r[S.GIVEN]), escape(r[S.SUGGESTED]), f"{r[S.P_WRONG]:.4f}",
            f"{r[S.SUSPICION]:.6f}", r[S.ACTION], *extra,
        )
    console.print(table)


def print_audit_summary(console: Console, result: AuditResult, top: int) -> None:
    s = result.summary
    console.print(f"[bold]labelclean audit[/bold] ({s['method']}) -> {escape(str(result.run_dir))}",
                  highlight=False)
    console.print(
        f"{s['samples_scored']} samples scored, {s['verified']} verified, {s['skipped']} skipped; "
        f"[bold]{s['flagged']} flagged[/bold] ({s['relabel']} to relabel, {s['review']} to review) "
        f"at suspicion >= {s['threshold']:.3f} ({s['threshold_method']}); "
        f"estimated noise rate {noise_rate_text(s)}",
        highlight=False,
    )
    for line in estimate_lines(s):
        console.print(escape(line), highlight=False)
    if s.get("verified_corrections"):
        console.print(f"{s['verified_corrections']} trusted label(s) differ from the given label.")
    pairs = confused_pairs(result.transition, 5)
    if pairs:
        console.print("most confused (true -> given): " + ", ".join(
            f"{escape(a)} -> {escape(b)} {p:.1%}" for a, b, p in pairs), highlight=False)
    if top > 0:
        rows = Run.open(result.run_dir).suspects(result.scores, top=top)
        if len(rows):
            print_suspects(console, rows, title=f"top {len(rows)} suspects")
    t = s["timings"]
    where = f" on {t['device']}, {t['precision']}" if t.get("device") else ""
    console.print(f"train {t['train_seconds']:.1f}s ({t['train_images_per_second']:.0f} img/s{where}), "
                  f"total {t['total_seconds']:.1f}s", highlight=False)


def confused_pairs(transition: pd.DataFrame, k: int) -> list[tuple[str, str, float]]:
    """The ``k`` largest off-diagonal entries of a transition matrix, above 0.5%."""
    values = transition.to_numpy(dtype=float)  # one array, not C x C pandas lookups (minutes at C=1,000)
    rows, cols = np.nonzero(values > 0.005)
    rows_names, col_names = [str(x) for x in transition.index], [str(x) for x in transition.columns]
    pairs = [(rows_names[i], col_names[j], float(values[i, j]))
             for i, j in zip(rows, cols) if rows_names[i] != col_names[j]]
    return sorted(pairs, key=lambda x: -x[2])[:k]


def print_evaluation(console: Console, result: dict) -> None:
    table = Table(title=f"evaluation of {escape(str(result['run']))} ({result['samples']} samples, "
                        f"{result['errors']} wrong labels)", title_justify="left")
    for name in ("", "auroc", "ap", "precision", "recall", "f1", "p@k", "flagged", "acc before",
                 "acc after"):
        table.add_column(name, justify="right" if name else "left")

    def row(name: str, m: dict) -> None:
        table.add_row(name, *(f"{m[k]:.3f}" for k in ("auroc", "ap", "precision", "recall", "f1",
                                                       "precision_at_k")),
                      str(m["flagged"]), f"{m['label_accuracy_before']:.3f}",
                      f"{m['label_accuracy_after_relabel']:.3f}")

    row("all", result)
    for name, m in result["per_class"].items():
        row(escape(name), m)
    console.print(table)
    console.print(f"suggested label correct on {result['suggestion_accuracy_on_errors']:.1%} of the "
                  f"wrong labels; {result['relabelled']} labels relabelled", highlight=False)
