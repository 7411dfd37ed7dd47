"""Progress display (rich bar or plain log lines) and optional TensorBoard for a run."""

from __future__ import annotations

from typing import Any


class ProgressMixin:
    """The trainer's progress bar and TensorBoard writer (rank 0 only)."""

    def _progress(self) -> Any:
        if self.cfg.quiet or self.rank != 0:
            return _NullProgress()
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        console = Console(stderr=True)
        if self._external_log is None:
            self._external_log = lambda m: console.print(m, markup=False, highlight=False)
        return Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                        MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=console)

    def _tensorboard(self) -> Any:
        if not self.cfg.tensorboard or self.rank != 0:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter

            return SummaryWriter(log_dir=str(self.out / "tensorboard"))
        except Exception:  # not installed or broken: TensorBoard is optional, stay silent
            return None


class _NullProgress:
    def __enter__(self) -> _NullProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def add_task(self, *a: Any, **k: Any) -> int:
        return 0

    def update(self, *a: Any, **k: Any) -> None:
        return None


def _fmt_epoch(epoch: float) -> str:
    return str(int(epoch)) if float(epoch).is_integer() else f"{epoch:.2f}"
