"""What the usefulness report adds to the wall time of README command 1 (`vaeaug run` on digits).

Runs the CLI as a user does, twice in one go with one fresh PREFECT_HOME: first with the report (it
also pays the Prefect database's first start), then with `report.enabled=false`; each in a fresh
output directory, without the training cache. Prints both wall times, the report's own time (from
the manifest), and the ratio (with - without) / without.

    python benchmarks/report_cost.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(root: Path, name: str, extra: list[str]) -> tuple[float, dict]:
    out = root / name
    cmd = [
        sys.executable,
        "-m",
        "pipelines",
        "run",
        f"output_dir={out}",
        f"train.storage_path={root}/runs-{name}",
    ]
    cmd += ["flow.cache_training=false", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    manifest = json.loads((out / "synthetic" / "manifest.json").read_text())
    return seconds, manifest.get("usefulness") or {}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="vaeaug-report-cost-") as tmp:
        root = Path(tmp)
        os.environ["PREFECT_HOME"] = str(root / "prefect")
        with_s, report = run(root, "with-report", [])
        without_s, _ = run(root, "without-report", ["report.enabled=false"])
    added = (with_s - without_s) / without_s
    print(
        f"vaeaug run with the report:    {with_s:.1f} s (the report itself: {report.get('seconds', 0):.1f} s)"
    )
    print(f"vaeaug run without the report: {without_s:.1f} s")
    print(f"added by the report: {100 * added:+.0f}% (target <= +30%)")
    print(f"report headline: {report.get('headline')}")


if __name__ == "__main__":
    main()
