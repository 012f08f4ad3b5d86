"""Progress for every wait longer than a few seconds: fine-tuning steps, denoising steps, cases.

On a terminal a tqdm bar redraws one line; in a log (stderr is not a TTY, as in CI or under
``nohup``) plain lines are printed at about every tenth of the work, so that a log never fills
with carriage returns. ``--quiet`` turns both off for the whole process.
"""

from __future__ import annotations

import sys
import time
from typing import Iterator, TextIO

_enabled = True


def set_enabled(enabled: bool) -> None:
    """Turn progress on or off for this process (the CLI's ``--quiet``)."""
    global _enabled
    _enabled = enabled


def enabled() -> bool:
    return _enabled


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Progress:
    """``total`` units of work named ``desc``; call :meth:`update` as each one finishes.

    Used as a context manager so that the bar is closed even when a case fails.
    """

    def __init__(self, total: int, desc: str, unit: str = "step", stream: TextIO | None = None):
        self.total = max(0, int(total))
        self.desc = desc
        self.unit = unit
        self.count = 0
        self.stream = stream if stream is not None else sys.stderr
        self.started = time.perf_counter()
        self._bar = None
        self._next_line = 0
        self.active = _enabled and self.total > 0
        if self.active and _is_terminal(self.stream):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit=unit, file=self.stream, leave=False, dynamic_ncols=True)
        # In a log: a line at about every tenth, and always at the end.
        self._every = max(1, -(-self.total // 10))

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def eta(self) -> float | None:
        """Seconds left at the mean pace so far; None before the first unit."""
        if not self.count:
            return None
        return (time.perf_counter() - self.started) / self.count * (self.total - self.count)

    def update(self, count: int = 1) -> None:
        self.count = min(self.total, self.count + count)
        if not self.active:
            return
        if self._bar is not None:
            self._bar.update(count)
            return
        if self.count >= self._next_line + self._every or self.count == self.total:
            self._next_line = self.count - self.count % self._every
            elapsed = time.perf_counter() - self.started
            left = self.eta()
            tail = f", about {_duration(left)} left" if left and left >= 1 and self.count < self.total else ""
            units = self.unit + ("es" if self.unit.endswith("s") else "s")
            print(f"{self.desc}: {self.count}/{self.total} {units} ({_duration(elapsed)}{tail})", file=self.stream, flush=True)

    def step_callback(self):
        """A diffusers ``callback_on_step_end`` that counts each denoising step here; None when
        nothing is shown, so that the pipeline makes no call at all."""
        if not self.active:
            return None

        def counted(pipe, step, timestep, tensors) -> dict:
            self.update()
            return {}

        return counted

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def case_line(position: int, total: int, started: float, text: str) -> str:
    """``[i/n] text (ETA ...)`` for a dataset run: the cases of this process done so far."""
    done = time.perf_counter() - started
    left = done / position * (total - position) if position < total else 0.0
    eta = f", about {_duration(left)} left" if left >= 1 else ""
    return f"[{position}/{total}] {text}{eta}"


def track(items: list, desc: str, unit: str = "image", show: bool = True) -> Iterator:
    """Iterate over ``items``, counting each one as done when the loop asks for the next."""
    with Progress(len(items) if show else 0, desc, unit) as bar:
        for item in items:
            yield item
            bar.update()
