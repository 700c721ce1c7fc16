"""The console: stage lines the user (and `benchmarks/command1.py`) reads, mirrors, and log routing."""

from __future__ import annotations

import importlib.util
import io
import logging
import re
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.console import Console, route_logs

REPO = Path(__file__).resolve().parents[2]
STAMP = r"\[\s*\d+\.\ds\]"  # `[  12.3s]`
DONE_LINE = re.compile(rf"^{STAMP} done   (?P<name>.+?)  (?P<secs>\d+\.\d) s(?:  \((?P<detail>.*)\))?$")


def _lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


def _benchmark_stage_regex() -> re.Pattern[str]:
    spec = importlib.util.spec_from_file_location("command1", REPO / "benchmarks" / "command1.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.STAGE


class _Tty(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_stage_prints_start_and_done_lines_with_duration_and_detail():
    """The documented line format: `[  12.3s] start  name: detail` ... `[  12.4s] done   name  0.1 s  (x)`."""
    out = io.StringIO()
    con = Console(out=out)
    with con.stage("train", detail="2 workers") as stage:
        time.sleep(0.12)
        stage.note("exported")
    start, done = _lines(out)[:2]
    assert re.fullmatch(rf"{STAMP} start  train: 2 workers", start), start
    m = DONE_LINE.match(done)
    assert m, done
    assert m["name"] == "train" and m["detail"] == "exported"
    assert 0.1 <= float(m["secs"]) < 5
    with con.stage("checks"):  # no detail: no "()"
        pass
    assert re.fullmatch(rf"{STAMP} start  checks", _lines(out)[-2])
    assert re.fullmatch(rf"{STAMP} done   checks  \d+\.\d s", _lines(out)[-1])


def test_failing_stage_prints_fail_and_reraises():
    """A raising stage is closed with FAIL (not done), its time is still counted, the error goes on."""
    out = io.StringIO()
    con = Console(out=out)
    with pytest.raises(ValueError, match="boom"), con.stage("generate") as stage:
        stage.note("half way")
        raise ValueError("boom")
    last = _lines(out)[-1]
    assert re.fullmatch(rf"{STAMP} FAIL   generate  \d+\.\d s  \(half way\)", last), last
    assert "done" not in out.getvalue()
    assert "generate" in con.timings
    with pytest.raises(KeyboardInterrupt), con.stage("interrupted"):
        raise KeyboardInterrupt
    assert " FAIL   interrupted " in _lines(out)[-1]


def test_timings_accumulate_per_stage_name_and_restart_clears_them():
    """Two stages of the same name add up (the summary's timings); `restart` starts afresh."""
    con = Console(out=io.StringIO())
    for _ in range(2):
        with con.stage("sample"):
            time.sleep(0.05)
    with con.stage("validate"):
        pass
    assert set(con.timings) == {"sample", "validate"}
    assert con.timings["sample"] >= 0.1
    assert con.timings["validate"] < con.timings["sample"]
    con.restart()
    assert con.timings == {} and con.elapsed() < 1


def test_line_prefixes_every_line_and_plain_does_not():
    """Free lines get the elapsed-time prefix on each line (blank ones stay blank); `plain` none."""
    out = io.StringIO()
    con = Console(out=out)
    con.line("first\n\nsecond")
    con.plain("Summary")
    con.plain("  rows: 340")
    lines = _lines(out)
    assert re.fullmatch(rf"{STAMP} first", lines[0]) and lines[1] == ""
    assert re.fullmatch(rf"{STAMP} second", lines[2])
    assert lines[3:] == ["Summary", "  rows: 340"]


def test_out_none_follows_sys_stdout(capsys):
    """`Console()` writes to whatever sys.stdout is at print time (pytest's capture here)."""
    con = Console()
    con.plain("hello")
    assert capsys.readouterr().out == "hello\n"


def test_mirrored_sends_lines_to_the_sink_only_inside_the_block():
    """`mirrored` copies each line (unprefixed) to the sink, stage lines included, until the block ends."""
    out, seen = io.StringIO(), []
    con = Console(out=out)
    con.line("before")
    with con.mirrored(seen.append):
        con.line("inside")
        with con.stage("evaluate"):
            pass
    con.line("after")
    assert seen[0] == "inside"
    assert seen[1] == "start  evaluate"
    assert seen[2].startswith("done   evaluate  ")
    assert len(seen) == 3
    assert len(_lines(out)) == 5  # the terminal got everything


def test_a_raising_sink_breaks_neither_printing_nor_other_sinks():
    """A log sink that fails (e.g. the Prefect API is gone) must not break the job or the terminal."""
    out, seen = io.StringIO(), []

    def broken(_: str) -> None:
        raise ConnectionError("api down")

    con = Console(out=out)
    with con.mirrored(broken), con.mirrored(seen.append):
        con.line("one")
        with con.stage("train"):
            pass
        con.line("two")
    assert seen[0] == "one" and seen[-1] == "two" and len(seen) == 4
    assert [line.split("] ", 1)[1].split()[0] for line in _lines(out)] == ["one", "start", "done", "two"]


def test_no_status_line_or_ticker_when_not_a_terminal():
    """Piped output (CI, logs, the benchmark) gets plain lines only: no `\\r`, no escape codes, no thread."""
    out = io.StringIO()
    con = Console(out=out)
    with con.stage("train"):
        time.sleep(0.6)  # more than two ticks
        con.line("epoch 1")
    text = out.getvalue()
    assert "\r" not in text and "\033" not in text
    assert con._ticker is None
    assert len(_lines(out)) == 3


def test_status_line_ticks_on_a_terminal_and_stops_after_the_stage():
    """On a terminal a status line shows the running stage and is cleared before each real line."""
    out = _Tty()
    con = Console(out=out)
    with con.stage("train"):
        time.sleep(0.6)
    assert con._ticker is not None
    con._ticker.join(timeout=2)
    assert not con._ticker.is_alive()
    text = out.getvalue()
    assert re.search(r"[|/\\-] train \d+s", text), text
    assert "\r\033[K" in text
    done = [line for line in text.split("\n") if " done " in line]
    assert len(done) == 1 and DONE_LINE.match(done[0].rsplit("\r\033[K", 1)[-1])


def test_benchmark_regex_parses_the_done_lines_the_console_prints():
    """`benchmarks/command1.py` reads stage times back from the console: the two must agree."""
    stage_re = _benchmark_stage_regex()
    out = io.StringIO()
    con = Console(out=out)
    with con.stage("load data") as stage:
        stage.note("1797 images 8x8, fingerprint abc")
    with con.stage("train"):
        time.sleep(0.1)
    with pytest.raises(RuntimeError), con.stage("generate"):
        raise RuntimeError("x")
    con.line("free text 1.0 s")
    parsed = {}
    for line in _lines(out):
        if m := stage_re.match(line):
            parsed[m.group(3)] = (m.group(2), float(m.group(4)))
    assert set(parsed) == {"load data", "train", "generate"}
    assert parsed["load data"][0] == "done " and parsed["generate"][0] == "FAIL "
    assert parsed["train"][1] == pytest.approx(con.timings["train"], abs=0.051)


@pytest.fixture
def saved_logging() -> Iterator[None]:
    """Put back the root logger and our/third-party loggers as they were (route_logs changes them)."""
    root = logging.getLogger()
    names = ("pipelines", "vae", "prefect", "ray")
    before_root = (list(root.handlers), root.level, [h.level for h in root.handlers])
    loggers = {n: logging.getLogger(n) for n in names}
    before = {n: (list(lg.handlers), lg.level, lg.propagate) for n, lg in loggers.items()}
    try:
        yield
    finally:
        logging.captureWarnings(False)
        handlers, level, levels = before_root
        root.handlers = handlers
        root.setLevel(level)
        for handler, handler_level in zip(handlers, levels, strict=True):
            handler.setLevel(handler_level)
        for name, (hs, lvl, propagate) in before.items():
            logger = logging.getLogger(name)
            logger.handlers, logger.propagate = hs, propagate
            logger.setLevel(lvl)


def _as_the_cli_starts() -> None:
    """A root logger without handlers (as in a fresh process), and Prefect's logger at INFO as Prefect
    configures it: so only the handlers' levels can keep its records off the terminal."""
    logging.getLogger().handlers = []
    logging.getLogger("prefect").setLevel(logging.INFO)


def test_route_logs_shows_our_warnings_but_not_third_party_chatter(saved_logging, capsys):
    """Default console: our warnings on stderr; Prefect's INFO and Ray's warnings stay off it."""
    _as_the_cli_starts()
    route_logs(False)
    logging.getLogger("pipelines.x").warning("disk almost full")
    logging.getLogger("pipelines.x").info("not shown")
    logging.getLogger("prefect.flow_runs").info("Finished in state Completed()")
    logging.getLogger("ray._private.something").warning("ray chatter")
    err = capsys.readouterr().err
    assert "WARNING pipelines.x: disk almost full" in err
    assert "not shown" not in err
    assert "Completed()" not in err
    assert "ray chatter" not in err
    assert err.count("disk almost full") == 1  # our handler only, not the root's as well
    # what Python does with a warning outside pytest's recorder (torch's kernel-registry UserWarning)
    warnings.showwarning("Overriding a previously registered kernel", UserWarning, "library.py", 508)
    assert "previously registered" not in capsys.readouterr().err  # Python warnings: -v only
    logging.getLogger("botocore.retries").error("bucket gone")
    assert "bucket gone" in capsys.readouterr().err  # third-party errors still show


def test_route_logs_verbose_shows_everything(saved_logging, capsys):
    """`-v`: our debug lines and third-party INFO come back."""
    _as_the_cli_starts()
    route_logs(True)
    logging.getLogger("vae.train").debug("step 3")
    logging.getLogger("prefect.flow_runs").info("Finished in state Completed()")
    warnings.showwarning("Overriding a previously registered kernel", UserWarning, "library.py", 508)
    err = capsys.readouterr().err
    assert "previously registered" in err
    assert "DEBUG vae.train: step 3" in err
    assert "Completed()" in err
