"""``review --interactive``: walk through suspects one by one and record decisions.

One key per decision, no Enter (the terminal is put in cbreak mode while a key is read):
``a`` accept the suggestion, ``k`` keep the given label, ``t`` type another label (a line,
with tab completion), ``s`` skip, ``b`` back, ``o`` open the image in the system viewer,
``q`` quit. The preview is drawn with half-block characters, two pixels per cell.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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

HELP = "[a]ccept suggestion  [k]eep given  [t]ype label  [s]kip  [b]ack  [o]pen image  [q]uit"
#: Preview side in pixels (columns; half as many rows), capped by the terminal's width.
PREVIEW = 32


def read_key(prompt: str, fd: int | None = None) -> str:
    """One key press from the terminal on ``fd`` (stdin by default), without Enter.

    cbreak mode keeps signals, so Ctrl-C still interrupts; off a POSIX terminal it reads a line.
    """
    sys.stdout.write(prompt)
    sys.stdout.flush()
    fd = sys.stdin.fileno() if fd is None else fd
    try:
        import termios
        import tty
    except ImportError:  # pragma: no cover - Windows
        return input()[:1]
    try:
        saved = termios.tcgetattr(fd)
    except termios.error:  # not a terminal
        return os.read(fd, 1).decode(errors="replace")
    try:
        tty.setcbreak(fd, termios.TCSANOW)  # keep keys typed ahead (TCSAFLUSH drops them)
        key = os.read(fd, 4).decode(errors="replace")[:1]
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
    sys.stdout.write(key + "\n")
    return key


def open_image(path: str) -> str | None:
    """Open ``path`` in the system's image viewer; return a line to show when it cannot."""
    if not Path(path).is_file():
        return f"{path}: not found"
    if sys.platform.startswith("win"):  # pragma: no cover
        os.startfile(path)  # type: ignore[attr-defined]
        return None
    opener = "open" if sys.platform == "darwin" else shutil.which("xdg-open")
    if opener is None:
        return f"no image viewer found (xdg-open); the image is {path}"
    subprocess.Popen([opener, path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True)
    return None


def preview(path: str, size: int = PREVIEW) -> Text | None:
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

    def run_loop(self, ask: Callable[[str], str], console: Console, show_preview: bool = True,
                 key: Callable[[str], str] | None = None,
                 opener: Callable[[str], str | None] = open_image) -> int:
        """Review until the list ends or the user quits; returns decisions made.

        ``key`` reads one key press (``ask``, a line, when not given); ``ask`` reads the label
        after ``t``; ``opener`` opens an image for ``o``.
        """
        key = key or ask
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
            size = max(8, min(PREVIEW, console.width - 2))
            if show_preview and (pic := preview(self.image_path(row), size)) is not None:
                console.print(pic, end="")
            pressed = key(HELP + " > ").strip().lower()[:1]
            if pressed == "q":
                break
            if pressed == "b":
                i = max(0, i - 1)
                continue
            if pressed == "o":
                problem = opener(self.image_path(row))
                if problem:
                    console.print(escape(problem), highlight=False)
                continue
            if pressed == "a":
                self.decide(row, "accept", row[S.SUGGESTED])
            elif pressed == "k":
                self.decide(row, "keep", row[S.GIVEN])
            elif pressed == "s":
                self.decide(row, "skip", "")
            elif pressed == "t":
                label = ask("label > ").strip()
                if label not in self.classes:
                    console.print(f"[red]{escape(repr(label))} is not a class[/red]; classes: "
                                  f"{escape(', '.join(self.classes))}",
                                  highlight=False)
                    continue
                self.decide(row, "relabel", label)
            else:
                console.print(f"unknown key; {escape(HELP)}", highlight=False)
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
