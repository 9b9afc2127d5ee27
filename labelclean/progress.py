"""Progress and notices. Rich on stderr for the CLI; silent by default for library use."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
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


class RichReporter(Reporter):
    """Progress bars and notices on stderr (results stay on stdout)."""

    def __init__(self, console: Console | None = None, show_progress: bool = True) -> None:
        super().__init__()
        self.console = console or Console(stderr=True)
        self.show_progress = show_progress and self.console.is_terminal

    def notice(self, message: str) -> None:
        super().notice(message)
        self.console.print(f"[yellow]note:[/yellow] {message}", highlight=False, soft_wrap=True)

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        if not self.show_progress:
            yield _ignore
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
