"""Wall time of README command 1 (`uv run vaeaug run`), cold and warm, broken down by stage.

Runs the command as a new user does, from an empty working directory with a fresh PREFECT_HOME and
no PREFECT_API_URL (Prefect's temporary server), and reads the stage lines of its console back
(`[  12.3s] done  train  31.2 s`). Three runs in one go:

- cold: first run (empty Prefect database, no training cache, no outputs);
- rerun: the unchanged command again: it must stop at once (the dataset exists) with exit code 2;
- warm: the same command after deleting the dataset (`outputs/*/synthetic`): the Prefect database
  exists and the model comes from the training cache.

Each line of the console is also classified as ours (timestamped, the summary) or not, so the figure
"third-party lines" is measured, not assumed.

    python benchmarks/command1.py [--uv]      # --uv: through `uv run` exactly as the README says
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGE = re.compile(r"^\[\s*([\d.]+)s\] (done |FAIL )\s+(\S.*?)\s+([\d.]+) s(?:\s|$)")
OURS = re.compile(r"^\[\s*[\d.]+s\] ")


def run(workdir: Path, prefect_home: Path, use_uv: bool) -> dict:
    """One run of command 1 in `workdir`: wall time, exit code, stage times, line counts."""
    base = ["uv", "run", "--project", str(REPO), "vaeaug"] if use_uv else [sys.executable, "-m", "pipelines"]
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "RAY_ADDRESS")}
    env["PREFECT_HOME"] = str(prefect_home)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [*base, "run"], cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    first_line, lines = None, []
    assert proc.stdout is not None
    for line in proc.stdout:
        first_line = first_line if first_line is not None else time.perf_counter() - t0
        lines.append(line.rstrip("\n"))
    code = proc.wait()
    wall = time.perf_counter() - t0
    stages: dict[str, float] = {}
    for line in lines:
        if m := STAGE.match(line):
            stages[m.group(3)] = stages.get(m.group(3), 0.0) + float(m.group(4))
    summary_at = next((i for i, line in enumerate(lines) if line == "Summary"), len(lines))
    foreign = [x for x in lines[:summary_at] if x.strip() and not OURS.match(x)]
    return {
        "exit_code": code,
        "wall_s": round(wall, 1),
        "first_line_s": round(first_line or wall, 2),
        "stages_s": {k: round(v, 1) for k, v in stages.items()},
        "lines": len(lines),
        "third_party_lines": len(foreign),
        "third_party_examples": foreign[:5],
        "tail": lines[-3:] if code else [],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uv", action="store_true", help="run through `uv run` as README command 1 does")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vaeaug-command1-") as tmp:
        workdir, home = Path(tmp) / "work", Path(tmp) / "prefect"
        workdir.mkdir()
        results = {"cold": run(workdir, home, args.uv), "rerun": run(workdir, home, args.uv)}
        for dataset in workdir.glob("outputs/*/synthetic"):
            shutil.rmtree(dataset)
        results["warm"] = run(workdir, home, args.uv)
    results["machine"] = {"cpus": os.cpu_count(), "load_1min_after": round(os.getloadavg()[0], 2)}
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
