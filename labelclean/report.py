"""Terminal rendering of audit results and suspect lists (Rich)."""

from __future__ import annotations

import pandas as pd
from rich.console import Console
from rich.table import Table

from labelclean.audit import AuditResult
from labelclean.errors import ConfigError
from labelclean.outputs import GIVEN, IS_SUSPECT, RANK, SUGGESTED, SUSPICION, VERIFIED

SORTS = ("suspicion", "rank", "given_label", "suggested_label")


def select_suspects(
    scores: pd.DataFrame,
    top: int = 20,
    class_name: str | None = None,
    min_suspicion: float = 0.0,
    include_all: bool = False,
    sort: str = "suspicion",
    classes: list[str] | None = None,
) -> pd.DataFrame:
    """Filter and sort a scores table: flagged rows (or all unverified with ``include_all``)."""
    if sort not in SORTS:
        raise ConfigError(f"--sort: expected one of {', '.join(SORTS)}, found {sort!r}")
    rows = scores[~scores[VERIFIED].astype(bool)]
    if not include_all:
        rows = rows[rows[IS_SUSPECT].astype(bool)]
    if class_name is not None:
        if classes and class_name not in classes:
            raise ConfigError(f"--class: {class_name!r} is not a class; classes: {', '.join(classes)}")
        rows = rows[rows[GIVEN].astype(str) == class_name]
    rows = rows[rows[SUSPICION] >= min_suspicion]
    ascending = sort in ("rank", "given_label", "suggested_label")
    rows = rows.sort_values([sort, RANK] if sort != RANK else [RANK], ascending=ascending, kind="stable")
    if top > 0:
        rows = rows.head(top)
    return rows.reset_index(drop=True)


def print_suspects(console: Console, rows: pd.DataFrame, title: str) -> None:
    table = Table(title=title, title_justify="left")
    for name, justify in (("rank", "right"), ("sample_id", "left"), ("given", "left"),
                          ("suggested", "left"), ("suspicion", "right"), ("action", "left")):
        table.add_column(name, justify=justify, overflow="fold")
    combined = "agreement" in rows.columns
    evidence = [] if combined else [c for c in rows.columns
                                    if c.endswith("_suspicion") and c != SUSPICION]
    for c in evidence:
        table.add_column(c.removesuffix("_suspicion"), justify="right")
    if combined:
        table.add_column("doubted by", overflow="fold")
    for _, r in rows.iterrows():
        extra = [f"{r[c]:.3f}" for c in evidence]
        if combined:
            extra.append(str(r["doubted_by"]) or "-")
        table.add_row(
            "" if pd.isna(r[RANK]) else str(int(r[RANK])), str(r["sample_id"]), str(r[GIVEN]),
            str(r[SUGGESTED]), f"{r[SUSPICION]:.3f}", str(r["action"]), *extra,
        )
    console.print(table)


def print_audit_summary(console: Console, result: AuditResult, top: int) -> None:
    s = result.summary
    console.print(f"[bold]labelclean audit[/bold] ({s['method']}) -> {result.run_dir}", highlight=False)
    console.print(
        f"{s['samples_scored']} samples scored, {s['verified']} verified, {s['skipped']} skipped; "
        f"[bold]{s['flagged']} flagged[/bold] ({s['relabel']} to relabel, {s['review']} to review) "
        f"at suspicion >= {s['threshold']:.3f} ({s['threshold_method']}); "
        f"estimated noise rate {s['estimated_noise_rate']:.1%}",
        highlight=False,
    )
    if s.get("verified_corrections"):
        console.print(f"{s['verified_corrections']} trusted label(s) differ from the given label.")
    pairs = confused_pairs(result.transition, 5)
    if pairs:
        console.print("most confused (true -> given): " + ", ".join(
            f"{a} -> {b} {p:.1%}" for a, b, p in pairs), highlight=False)
    if top > 0:
        rows = select_suspects(result.scores, top=top)
        if len(rows):
            print_suspects(console, rows, title=f"top {len(rows)} suspects")
    t = s["timings"]
    console.print(f"train {t['train_seconds']:.1f}s ({t['train_images_per_second']:.0f} img/s), "
                  f"total {t['total_seconds']:.1f}s", highlight=False)


def confused_pairs(transition: pd.DataFrame, k: int) -> list[tuple[str, str, float]]:
    """The ``k`` largest off-diagonal entries of a transition matrix, above 0.5%."""
    pairs = [
        (str(a), str(b), float(transition.loc[a, b]))
        for a in transition.index for b in transition.columns
        if a != b and transition.loc[a, b] > 0.005
    ]
    return sorted(pairs, key=lambda x: -x[2])[:k]


def print_evaluation(console: Console, result: dict) -> None:
    table = Table(title=f"evaluation of {result['run']} ({result['samples']} samples, "
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
        row(name, m)
    console.print(table)
    console.print(f"suggested label correct on {result['suggestion_accuracy_on_errors']:.1%} of the "
                  f"wrong labels; {result['relabelled']} labels relabelled", highlight=False)
