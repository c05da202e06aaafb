"""Step-by-step progress on stderr (stdout stays clean for --json)."""

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol


class Progress(Protocol):
    def step(self, title: str) -> AbstractContextManager[None]:
        """A named step: shown done with its duration, or failed if the block raises."""
        ...

    def detail(self, text: str) -> None:
        """What the current step is doing now (e.g. the Ansible task)."""
        ...


class QuietProgress:
    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        yield

    def detail(self, text: str) -> None:
        pass


class ConsoleProgress:
    """One line per step with its duration; a live spinner with the current task on a terminal."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False)
        self._status = None

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        start = time.monotonic()
        if self.console.is_terminal:
            with self.console.status(f"{title}…") as status:
                self._status = status
                try:
                    yield
                except BaseException:
                    self._status = None
                    self.console.print(f"[red]✗[/] {title} ({time.monotonic() - start:.1f}s)")
                    raise
            self._status = None
        else:
            try:
                yield
            except BaseException:
                self.console.print(f"✗ {title} ({time.monotonic() - start:.1f}s)")
                raise
        self.console.print(f"[green]✓[/] {title} ({time.monotonic() - start:.1f}s)")

    def detail(self, text: str) -> None:
        if self._status is not None:
            self._status.update(text)


def make_progress(enabled: bool) -> Progress:
    return ConsoleProgress() if enabled else QuietProgress()
