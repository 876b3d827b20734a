"""What a long job is doing: one live line on a terminal, plain lines in a log, or nothing.

Library and experiment code says what it is doing with :func:`stage`, and need not care whether
anyone is watching::

    from gradflow import progress

    progress.stage("training 8 seeds")

:func:`stage` does nothing unless a display is open. ``gradflow figures`` opens one around its
experiments with :func:`display`::

    with progress.display(len(names)) as d:
        for name in names:
            with d.experiment(name):
                run(name)        # its progress.stage(...) calls show up on the line

On a terminal (stderr is a TTY) the display is one live line, redrawn by ``rich`` (installed
with flax): a spinner, ``[i/N]``, the experiment's name, its current stage and the time spent in
both. Anywhere else (a CI log, ``2> file``) it writes one plain line per experiment and per stage,
flushed as it goes, so a log shows where a run is or where it died. ``quiet=True`` writes
nothing.

The open displays are module-level (a stack; :func:`stage` reports to the innermost), not a
context variable, so a stage reported from a worker thread shows up too.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator

__all__ = ["Display", "active", "display", "stage"]

_ACTIVE: list[Display] = []
_LOCK = threading.Lock()


def stage(text: str) -> None:
    """Reports the current stage of the running job (e.g. ``"training 8 seeds"``).

    A no-op unless a :func:`display` is open; cheap enough to call a few times per experiment
    (each call is one line in a plain log, so not once per training step).

    Args:
      text: a short description, shown until the next call.

    Raises:
      TypeError: if ``text`` is not a str.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    with _LOCK:
        current = _ACTIVE[-1] if _ACTIVE else None
    if current is not None:
        current.stage(text)


def active() -> bool:
    """Whether a display is open (so that :func:`stage` reaches someone)."""
    with _LOCK:
        return bool(_ACTIVE)


def _clock(seconds: float) -> str:
    minutes, s = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{s:02d}" if hours else f"{minutes}:{s:02d}"


class Display:
    """The progress of N named jobs (experiments) and of the current one's stages.

    Use it through :func:`display`, which opens and closes it.

    Args:
      total: the number of experiments N, >= 1.
      stream: where to write (default: ``sys.stderr`` at the time of opening).
      quiet: write nothing.
      live: True: a live ``rich`` line; False: plain lines; None: live when ``stream`` is a
        terminal.
    """

    def __init__(self, total: int, *, stream=None, quiet: bool = False, live: bool | None = None):
        if isinstance(total, bool) or not isinstance(total, int) or total < 1:
            raise ValueError(f"total must be an integer >= 1, got {total!r}")
        if live not in (None, True, False):
            raise TypeError(f"live must be None, True or False, got {live!r}")
        self.total = total
        self.stream = sys.stderr if stream is None else stream
        self.quiet = bool(quiet)
        if live is None:
            live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.live = live and not self.quiet
        self.index = 0
        self.name = ""
        self.text = ""
        self._t_experiment = self._t_stage = time.perf_counter()
        self._lock = threading.Lock()
        self._live = None

    # -- the line ----------------------------------------------------------------------------

    def line(self) -> str:
        """The current status line (without the spinner)."""
        now = time.perf_counter()
        parts = [f"[{self.index}/{self.total}] {self.name}"]
        if self.text:
            parts.append(f"{self.text} ({_clock(now - self._t_stage)})")
        parts.append(f"{_clock(now - self._t_experiment)}")
        return " · ".join(parts)

    def __rich__(self):
        # Called by rich on every refresh (4 per second), so the clocks tick between stages.
        from rich.spinner import Spinner
        from rich.text import Text

        # Text, not a str: rich would read "[…]" in a name or stage as markup.
        return Spinner("dots", text=Text(self.line()), style="cyan")

    def _plain(self, message: str) -> None:
        self.stream.write(f"[gradflow] {self.index}/{self.total} {self.name}: {message}\n")
        self.stream.flush()

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.refresh()

    # -- events ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def experiment(self, name: str) -> Iterator[Display]:
        """Marks the next experiment as running while the block runs.

        Args:
          name: shown on the line.
        """
        with self._lock:
            if self.index >= self.total:
                raise ValueError(f"more experiments than total={self.total}")
            self.index += 1
            self.name, self.text = str(name), ""
            self._t_experiment = self._t_stage = time.perf_counter()
        if self.live:
            self._refresh()
        elif not self.quiet:
            self._plain("started")
        yield self

    def stage(self, text: str) -> None:
        """Sets the current experiment's stage (see the module-level :func:`stage`)."""
        with self._lock:
            self.text = text
            self._t_stage = time.perf_counter()
            elapsed = self._t_stage - self._t_experiment
        if self.live:
            self._refresh()
        elif not self.quiet:
            self._plain(f"{text} (at {elapsed:.1f} s)")

    # -- opening and closing -----------------------------------------------------------------

    def open(self) -> Display:
        if self.live:
            from rich.console import Console
            from rich.live import Live

            console = Console(file=self.stream, force_terminal=True)
            # Lines printed to stdout while the live line is drawn go above it, but only when
            # stdout is a terminal too: `gradflow figures … > log` keeps its stdout in the file.
            to_terminal = bool(getattr(sys.stdout, "isatty", lambda: False)())
            self._live = Live(
                self,
                console=console,
                refresh_per_second=4,
                transient=True,
                redirect_stdout=to_terminal,
                redirect_stderr=self.stream is sys.stderr,
            )
            self._live.start()
        with _LOCK:
            _ACTIVE.append(self)
        return self

    def close(self) -> None:
        with _LOCK:
            if self in _ACTIVE:
                _ACTIVE.remove(self)
        if self._live is not None:
            self._live.stop()
            self._live = None


@contextlib.contextmanager
def display(
    total: int, *, stream=None, quiet: bool = False, live: bool | None = None
) -> Iterator[Display]:
    """Opens a :class:`Display` for ``total`` experiments; :func:`stage` reports to it.

    Args:
      total: the number of experiments, >= 1.
      stream: where to write (default ``sys.stderr``).
      quiet: write nothing (:func:`stage` calls are still accepted).
      live: True/False forces a live line / plain lines; None: live on a terminal.

    Yields:
      the :class:`Display`; call ``with d.experiment(name): …`` around each experiment.
    """
    d = Display(total, stream=stream, quiet=quiet, live=live).open()
    try:
        yield d
    finally:
        d.close()
