"""The tuning progress display: one overall bar with an ETA (profiling the kernels, then the
sample budget), the projected kernel time per inference as rounds improve it, and the kernel
being tuned. Off with ``progress=False`` (and when there is nothing to tune)."""

from __future__ import annotations

from typing import Any

__all__ = ["TuningDisplay"]


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.3f} ms"


class TuningDisplay:
    """A rich progress bar on stderr (see the module docstring)."""

    def __init__(self, enabled: bool, budget: int) -> None:
        self.enabled = enabled
        self.budget = budget
        self.progress: Any = None
        self.bar: Any = None
        self.start_s: float | None = None

    def __enter__(self) -> TuningDisplay:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(
                TextColumn("[bold]{task.description}[/]"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=Console(stderr=True),
            )
            self.progress.__enter__()
            self.bar = self.progress.add_task("torch_rc", total=1, info="")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def phase(self, label: str, total: int, projected_s: float | None = None) -> None:
        """Start a phase: ``profiling kernels`` (``total`` kernels) or ``tuning`` (samples)."""
        if projected_s is not None:
            self.start_s = projected_s
        if self.progress is not None:
            info = f"kernels {_ms(projected_s)} per inference" if projected_s is not None else ""
            self.progress.reset(self.bar, total=max(total, 1), description=label, info=info)

    def advance(self, done: int) -> None:
        if self.progress is not None:
            self.progress.update(self.bar, completed=done)

    def round(self, kernel: str, spent: int, projected_s: float, best_s: float | None) -> None:
        """After a round: samples spent, projected kernel time, the kernel just tuned."""
        if self.progress is None:
            return
        change = ""
        if self.start_s:
            change = f" ({(projected_s / self.start_s - 1) * 100:+.1f}%)"
        info = (
            f"kernels {_ms(self.start_s)} -> {_ms(projected_s)} per inference{change}; "
            f"last: {kernel} best {_ms(best_s)}"
        )
        self.progress.update(self.bar, completed=spent, info=info)
