"""What a user sees on the terminal: our story, not third-party chatter.

One line per stage with its duration (`console.stage`), free lines in between (`console.line`), and on
a terminal a status line that ticks from the first second while a stage has no output of its own.
Everything is prefixed with the time since the command started, so the console doubles as a
timeline (`benchmarks/command1.py` reads the stage lines back).

Third-party output (Prefect's console logs, Ray Train's per-report lines, Ray worker logs, uv's
warnings from Ray's `uv run` hook) is off by default and comes back with `-v`
(`set_verbose(True)`; see `quiet_prefect_console` and the Ray settings that read `console.verbose`).

Stdlib only: the CLI imports this before torch, Ray or Prefect so that the first line shows at once.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TextIO

#: Stage lines look like `[  12.3s] done  train  31.2 s  (details)`; the benchmark parses them.
DONE, FAILED, START = "done ", "FAIL ", "start"
TICK_S = 0.25


@dataclass
class Stage:
    """An open stage: `note` sets the details printed on its closing line."""

    name: str
    started: float
    live: bool = True
    detail: str = ""

    def note(self, detail: str) -> None:
        """Details shown after the duration on the stage's closing line."""
        self.detail = detail


@dataclass
class Console:
    """The command's console (one per process: `console`).

    Args:
        out: where lines go; None: whatever `sys.stdout` is when a line is printed.
        verbose: third-party logs on (`-v`).
    """

    out: TextIO | None = None
    verbose: bool = False
    t0: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=dict)
    _open: list[Stage] = field(default_factory=list, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _ticker: threading.Thread | None = field(default=None, repr=False)
    _status_shown: bool = field(default=False, repr=False)
    _mirrors: list[Callable[[str], None]] = field(default_factory=list, repr=False)

    @property
    def stream(self) -> TextIO:
        """Where lines go now."""
        return self.out if self.out is not None else sys.stdout

    def elapsed(self) -> float:
        """Seconds since the command started (`restart` resets it)."""
        return time.perf_counter() - self.t0

    def restart(self) -> None:
        """Start the clock and the timings afresh (a new command in the same process)."""
        with self._lock:
            self.t0 = time.perf_counter()
            self.timings = {}

    def line(self, text: str = "") -> None:
        """Print `text` (each of its lines prefixed by the elapsed time; blank lines stay blank)."""
        text = _redact(text)  # mirrors store lines (Prefect's API): URLs never keep user:password
        stamp = f"[{self.elapsed():6.1f}s] "
        with self._lock:
            self._clear_status()
            for part in text.split("\n"):
                print(stamp + part if part else "", file=self.stream, flush=True)
            self._draw_status()
            mirrors = list(self._mirrors)
        for mirror in mirrors:
            try:
                mirror(text)
            except Exception:  # a log sink must never break the job
                logging.getLogger(__name__).debug("console mirror failed", exc_info=True)

    @contextmanager
    def mirrored(self, sink: Callable[[str], None]) -> Iterator[None]:
        """Also send every line to `sink` while the block runs (e.g. a Prefect run logger, so that
        the UI shows the same story as the terminal)."""
        with self._lock:
            self._mirrors.append(sink)
        try:
            yield
        finally:
            with self._lock:
                self._mirrors.remove(sink)

    def plain(self, text: str = "") -> None:
        """Print `text` as is (the final summary, snippets meant to be copied), URL user-info aside."""
        with self._lock:
            self._clear_status()
            print(_redact(text), file=self.stream, flush=True)
            self._draw_status()

    @contextmanager
    def stage(self, name: str, detail: str = "", live: bool = True) -> Iterator[Stage]:
        """Announce a stage, time it, and close it with `done` (or `FAIL` when it raises).

        Args:
            name: short name (the key in `timings`).
            detail: shown on the opening line.
            live: tick a status line on a terminal while the stage runs (False when the stage draws
                its own progress bar).
        """
        stage = Stage(name, time.perf_counter(), live)
        self.line(f"{START}  {name}" + (f": {detail}" if detail else ""))
        with self._lock:
            self._open.append(stage)
        self._start_ticker()
        try:
            yield stage
        except BaseException:
            self._close(stage, FAILED)
            raise
        self._close(stage, DONE)

    def _close(self, stage: Stage, word: str) -> None:
        seconds = time.perf_counter() - stage.started
        with self._lock:
            if stage in self._open:
                self._open.remove(stage)
            self.timings[stage.name] = self.timings.get(stage.name, 0.0) + seconds
        detail = f"  ({stage.detail})" if stage.detail else ""
        self.line(f"{word}  {stage.name}  {seconds:.1f} s{detail}")

    # ------------------------------------------------------------------------ terminal status line
    def _interactive(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def _status(self) -> str:
        live = [s for s in self._open if s.live]
        if not live or not self._interactive():
            return ""
        spin = "|/-\\"[int(self.elapsed() / TICK_S) % 4]
        parts = ", ".join(f"{s.name} {time.perf_counter() - s.started:.0f}s" for s in live)
        return f"[{self.elapsed():6.1f}s] {spin} {parts}"

    def _clear_status(self) -> None:
        if self._status_shown:
            self.stream.write("\r\033[K")
            self._status_shown = False

    def _draw_status(self) -> None:
        status = self._status()
        if status:
            self.stream.write(status)
            self.stream.flush()
            self._status_shown = True

    def _start_ticker(self) -> None:
        if not self._interactive() or (self._ticker is not None and self._ticker.is_alive()):
            return

        def tick() -> None:
            while True:
                time.sleep(TICK_S)
                with self._lock:
                    if not self._open:
                        self._clear_status()
                        return
                    self._clear_status()
                    self._draw_status()

        self._ticker = threading.Thread(target=tick, name="vaeaug-console", daemon=True)
        self._ticker.start()


def _redact(text: str) -> str:
    """`pipelines.redaction.redact_text`, imported on first use (this module stays stdlib-only)."""
    from pipelines.redaction import redact_text

    return redact_text(text)


#: The process's console.
console = Console()


def set_verbose(verbose: bool) -> None:
    """Third-party logs on (`-v`) or off (the default), for this process and the workers it starts."""
    console.verbose = verbose


def route_logs(verbose: bool) -> None:
    """Our loggers (`pipelines`, `vae`) print warnings (everything with -v) to stderr on their own
    handler, so that silencing Prefect's console handler on the root logger does not hide them; the
    root logger shows third-party errors only (everything with -v)."""
    logging.basicConfig(format="%(message)s")
    logging.captureWarnings(True)  # third-party UserWarnings (torch's kernel registry...): -v
    for handler in logging.getLogger().handlers:  # handler levels: records propagated from below too
        handler.setLevel(logging.DEBUG if verbose else logging.ERROR)
    logging.getLogger().setLevel(logging.DEBUG if verbose else logging.WARNING)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    if not verbose:
        # Ray's logger does not propagate; once `ray.init` drops its handler, Python's last-resort
        # handler prints its warnings (e.g. token-auth hints): its own level keeps them off.
        logging.getLogger("ray").setLevel(logging.ERROR)
    for name in ("pipelines", "vae"):
        ours = logging.getLogger(name)
        ours.handlers = [handler]
        ours.setLevel(logging.DEBUG if verbose else logging.WARNING)
        ours.propagate = False


def quiet_prefect_console() -> None:
    """Silence Prefect's console handlers unless verbose (its logs still reach the API and the UI).

    Prefect attaches a console handler to the root logger when it configures logging; flow and task
    run logs ("Finished in state Completed()", failure tracebacks of user errors that the CLI already
    reports in one line) propagate to it. Call after importing Prefect.
    """
    if console.verbose:
        return
    from prefect.logging.handlers import PrefectConsoleHandler

    for name in ("", "prefect", "uvicorn", "fastapi"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, PrefectConsoleHandler):
                handler.setLevel(logging.CRITICAL + 1)


__all__ = ["Console", "Stage", "console", "quiet_prefect_console", "route_logs", "set_verbose"]
