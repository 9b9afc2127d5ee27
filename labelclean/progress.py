"""Progress and notices. Rich on stderr for the CLI; silent by default for library use."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

Advance = Callable[[int], None]


def _ignore(n: int = 1) -> None:
    """Progress nobody shows."""


class Reporter:
    """Silent reporter: collects notices, shows nothing."""

    def __init__(self) -> None:
        self.notices: list[str] = []

    def notice(self, message: str) -> None:
        self.notices.append(message)

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        yield _ignore

    def epoch(self, epoch: int, epochs: int, loss: float, images_per_second: float,
              seconds_left: float) -> None:
        """One training epoch finished (``epoch`` counts from 1)."""


class RichReporter(Reporter):
    """Progress bars and notices on stderr (results stay on stdout)."""

    def __init__(self, console: Console | None = None, show_progress: bool = True) -> None:
        super().__init__()
        self.console = console or Console(stderr=True)
        self.show_progress = show_progress and self.console.is_terminal

    def notice(self, message: str) -> None:
        super().notice(message)
        self.console.print(f"[yellow]note:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)

    def _line(self, text: str) -> None:
        self.console.print(escape(text), highlight=False, soft_wrap=True)

    def epoch(self, epoch: int, epochs: int, loss: float, images_per_second: float,
              seconds_left: float) -> None:
        if not self.show_progress:  # a bar shows this on a terminal
            self._line(f"epoch {epoch}/{epochs}: loss {loss:.4f}, {images_per_second:.0f} img/s, "
                       f"about {seconds_left:.0f}s left")

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        if not self.show_progress:
            # Off a terminal (CI, nohup, a pipe): one plain line per stage instead of a bar.
            started = time.perf_counter()
            self._line(f"{description}: {total} steps")
            yield _ignore
            self._line(f"{description}: done in {time.perf_counter() - started:.1f}s")
            return
        columns = (
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(),
        )
        with Progress(*columns, console=self.console, transient=True) as progress:
            task = progress.add_task(description, total=total)

            def advance(n: int = 1) -> None:
                progress.advance(task, n)

            yield advance


def peak_rss_mb() -> float | None:
    """The process's peak resident memory so far, in MiB (``None`` where the OS does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


class Stopwatch:
    """Wall time and peak resident memory at the end of each stage of a run (``summary.json``'s
    ``timings.stages``; ``benchmarks/scale.py`` reads them)."""

    def __init__(self) -> None:
        self.stages: list[dict[str, Any]] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.stages.append({"stage": name, "seconds": round(time.perf_counter() - started, 3),
                            "peak_rss_mb": peak_rss_mb()})
