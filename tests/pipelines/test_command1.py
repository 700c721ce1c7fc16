"""README command 1 (`vaeaug run`) as a new user runs it: a fresh Prefect home, no Prefect API URL (the
temporary server), a fresh working directory, the console script itself. The console must hold our
story only (no tracebacks, no third-party lines), and its summary must name the usefulness figures and
the pictures, which must exist. Running it again must stop at once with one line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

OURS = re.compile(r"^\[\s*[\d.]+s\] ")
#: Quick settings: the same command and code path, a smaller budget.
QUICK = [
    "train.epochs=2",
    "train.min_steps=0",
    "generate.num_samples=500",
    "report.steps=40",
    "report.seeds=1",
]
#: What the test session sets for itself; a new user's shell has none of it.
SESSION_ONLY = (
    "PREFECT_API_URL",
    "PREFECT_HOME",
    "RAY_ADDRESS",
    "RAY_AUTH_MODE",
    "RAY_DEDUP_LOGS",
    "RAY_USAGE_STATS_ENABLED",
    "TQDM_DISABLE",
)


def new_user(tmp_path: Path, *args: str) -> dict[str, Any]:
    """`subprocess` arguments running `vaeaug run *args` as a new user's shell does: in `tmp_path`, a
    fresh Prefect home, none of the session's settings; stdout and stderr together, as text."""
    env = {k: v for k, v in os.environ.items() if k not in SESSION_ONLY}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    command = [str(Path(sys.executable).with_name("vaeaug")), "run", *args]
    output = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    return {"args": command, "cwd": tmp_path, "env": env, **output}


def _vaeaug(tmp_path: Path, *args: str, timeout: int = 900) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    proc = subprocess.run(**new_user(tmp_path, *args), timeout=timeout)
    return proc.returncode, proc.stdout, time.perf_counter() - t0


@pytest.mark.slow
def test_command_one_prints_our_story_and_a_summary_then_refuses_to_overwrite(tmp_path):
    """No traceback, no third-party line, a line per stage, the figures and the pictures; a second run
    stops before any work (the dataset exists) with one line and exit code 2."""
    code, out, _ = _vaeaug(tmp_path, *QUICK)
    assert code == 0, out[-3000:]
    assert "Traceback" not in out
    lines = out.splitlines()
    summary = lines.index("Summary")
    foreign = [line for line in lines[:summary] if line.strip() and not OURS.match(line)]
    assert foreign == [], f"third-party or unstamped lines: {foreign[:5]}"
    done = {m.group(1) for line in lines if (m := re.search(r"\] done\s+(.+?)\s+[\d.]+ s", line))}
    expected = {"checks", "ray", "prefect", "load data", "train", "evaluate", "generate"}
    assert expected | {"usefulness report", "validate"} <= done

    tail = "\n".join(lines[summary:])
    for figure in ("label fidelity", "CAS", "points", "held-out"):
        assert figure in tail, figure
    pictures = re.findall(r"picture\s+(\S+\.png)", tail)
    names = {Path(p).name for p in pictures}
    assert {"samples.png", "loss_curve.png", "preview.png", "usefulness.png"} <= names
    assert all(Path(p).is_file() for p in pictures)
    assert re.search(r"run\s+vae-[0-9a-f]{12}\s+\(checkpoints: ", tail)
    assert out.count("SyntheticDataset(") == 1  # the how-to-load snippet, once
    assert (tmp_path / "outputs" / "digits" / "synthetic" / "_SUCCESS").is_file()

    code, again, seconds = _vaeaug(tmp_path, *QUICK, timeout=300)
    assert code == 2
    assert "Traceback" not in again
    errors = [line for line in again.splitlines() if "error:" in line]
    assert len(errors) == 1 and "generate.if_exists" in errors[0]
    assert "start  ray" not in again and "start  train" not in again  # the checks come first
    assert seconds < 60
