"""``review --interactive``: walk through suspects one by one and record decisions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from labelclean.data.images import load_image
from labelclean.errors import ConfigError
from labelclean.export.decisions import append_decision, load_decisions, now, reviewer
from labelclean.run import schema as S
from labelclean.run.folder import Run

HELP = "[a]ccept suggestion  [k]eep given  [t]ype label  [s]kip  [b]ack  [q]uit"


def preview(path: str, size: int = 16) -> Text | None:
    """A small colour preview drawn with half-block characters (two pixels per cell)."""
    try:
        arr = load_image(path, size)
    except (OSError, ValueError, SyntaxError):
        return None
    text = Text()
    for y in range(0, size, 2):
        for x in range(size):
            top, bottom = arr[y, x], arr[min(y + 1, size - 1), x]
            text.append("▀", style=f"rgb({top[0]},{top[1]},{top[2]}) on rgb({bottom[0]},{bottom[1]},{bottom[2]})")
        text.append("\n")
    return text


class ReviewSession:
    """Suspects not yet decided, highest suspicion first; decisions go to ``decisions.csv``."""

    def __init__(self, run_dir: Path, class_name: str | None = None) -> None:
        self.run = Run.open(Path(run_dir))
        self.classes: list[str] = self.run.classes
        done = set(load_decisions(self.run.path)[S.SAMPLE_ID].astype(str))
        self.items = self.run.suspects(class_name=class_name, exclude=done)

    def image_path(self, row: pd.Series) -> str:
        return str(row[S.IMAGE_PATH])

    def decide(self, row: pd.Series, decision: str, label: str) -> None:
        append_decision(self.run.path, {
            S.SAMPLE_ID: row[S.SAMPLE_ID], S.GIVEN: row[S.GIVEN],
            "decision": decision, "label": label, "reviewer": reviewer(), "decided_at": now(),
        })

    def run_loop(self, ask: Callable[[str], str], console: Console, show_preview: bool = True) -> int:
        """Review until the list ends or the user quits; returns decisions made."""
        made = 0
        i = 0
        total = len(self.items)
        if total == 0:
            console.print("nothing to review: every flagged sample has a decision")
            return 0
        while 0 <= i < total:
            row = self.items.iloc[i]
            console.rule(f"{i + 1} of {total}")
            console.print(f"[bold]{escape(row[S.SAMPLE_ID])}[/bold]  {escape(self.image_path(row))}",
                          highlight=False)
            console.print(f"given [cyan]{escape(row[S.GIVEN])}[/cyan] -> suggested "
                          f"[green]{escape(row[S.SUGGESTED])}[/green]  p_wrong {row[S.P_WRONG]:.3f}  "
                          f"action {row[S.ACTION]}", highlight=False)
            evidence = {c: row[c] for c in row.index
                        if c.endswith(S.EVIDENCE_SUFFIX) or c == S.DOUBTED_BY}
            if evidence:
                console.print("  ".join(f"{k}={v:.3f}" if isinstance(v, (float, np.floating)) else f"{k}={escape(str(v))}"
                                        for k, v in evidence.items()), highlight=False)
            if show_preview and (pic := preview(self.image_path(row))) is not None:
                console.print(pic, end="")
            key = ask(HELP + " > ").strip().lower()[:1]
            if key == "q":
                break
            if key == "b":
                i = max(0, i - 1)
                continue
            if key == "a":
                self.decide(row, "accept", row[S.SUGGESTED])
            elif key == "k":
                self.decide(row, "keep", row[S.GIVEN])
            elif key == "s":
                self.decide(row, "skip", "")
            elif key == "t":
                label = ask("label > ").strip()
                if label not in self.classes:
                    console.print(f"[red]{escape(repr(label))} is not a class[/red]; classes: "
                                  f"{escape(', '.join(self.classes))}",
                                  highlight=False)
                    continue
                self.decide(row, "relabel", label)
            else:
                console.print(f"unknown key; {HELP}")
                continue
            made += 1
            i += 1
        return made


def interactive_input(classes: list[str]) -> Callable[[str], str]:
    """``input`` with tab completion of class names where readline is available."""
    try:
        import readline

        def complete(text: str, state: int) -> str | None:
            matches = [c for c in classes if c.startswith(text)]
            return matches[state] if state < len(matches) else None

        readline.set_completer(complete)
        readline.parse_and_bind("tab: complete")
    except ImportError:  # pragma: no cover - Windows without pyreadline
        pass
    return input


def require_tty(stdin_isatty: bool) -> None:
    if not stdin_isatty:
        raise ConfigError("--interactive needs a terminal (standard input is not a TTY); "
                          "use 'labelclean review RUN_DIR --format json' in scripts")
