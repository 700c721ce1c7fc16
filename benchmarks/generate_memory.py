"""Generation memory: peak RSS of the driver and of the actors for 10^4 vs 10^6 rows.

Each size runs in a fresh process with a fresh local Ray (so peaks are not carried over), with a
small decoder making 8x8 images, shards of 10^4 rows and `--actors` actors. Memory should be flat:
the driver holds only shard specs and stats, an actor one shard's latents and one row group.

    python benchmarks/generate_memory.py --rows 10000 1000000 --actors 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(rows: int, actors: int, shard_size: int) -> dict[str, float]:
    """Run one job in this process and return its figures."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_worker_niceness", "0")  # Ray's default (15) is slow on a shared machine
    import ray
    import torch

    from pipelines.config import GenerateConfig, PipelineConfig, RayConfig
    from pipelines.generate import generate
    from vae.config import VAEConfig
    from vae.io import save_model
    from vae.model import VAE

    root = Path(tempfile.mkdtemp(prefix="vaeaug-mem-"))
    torch.manual_seed(0)
    model = VAE(VAEConfig(image_size=(8, 8), hidden_channels=(8, 16), latent_dim=8, num_classes=10))
    save_model(model, str(root / "model"), extra={"class_names": [str(k) for k in range(10)]})
    ray.init(
        address="local",
        num_cpus=actors,
        include_dashboard=False,
        configure_logging=False,
        log_to_driver=False,
    )
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gen = GenerateConfig(
        num_samples=rows, shard_size=shard_size, batch_size=1024, num_actors=actors, output=str(root / "ds")
    )
    t = time.perf_counter()
    res = generate(
        PipelineConfig(generate=gen, ray=RayConfig(num_cpus=actors)), str(root / "model"), progress=False
    )
    wall = time.perf_counter() - t
    size = sum(p.stat().st_size for p in (root / "ds" / "data").iterdir())
    ray.shutdown()
    shutil.rmtree(root, ignore_errors=True)
    return {
        "rows": res.rows,
        "files": len(res.files),
        "wall_s": wall,
        "rows_per_s": res.rows_per_s,
        "driver_peak_mb": res.peak_rss_mb["driver"],
        "driver_before_job_mb": before,
        "actor_peak_mb": res.peak_rss_mb["writers_max"],
        "actors_total_peak_mb": res.peak_rss_mb["writers_total"],
        "dataset_mb": size / 2**20,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000, 1_000_000])
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=10_000)
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", type=str, default=None)
    args = ap.parse_args()
    if args.child is not None:
        print("RESULT " + json.dumps(child(args.child, args.actors, args.shard_size)), flush=True)
        return
    results = []
    for rows in args.rows:
        cmd = [sys.executable, __file__, "--child", str(rows), "--actors", str(args.actors)]
        cmd += ["--shard-size", str(args.shard_size)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"run with {rows} rows failed:\n{out.stderr[-3000:]}")
        results.append(json.loads(line[len("RESULT ") :]))
    head = ["rows", "files", "wall s", "rows/s", "driver peak MB", "actor peak MB (max)", "actors total MB"]
    print("| " + " | ".join([*head, "data MB"]) + " |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['rows']:,} | {r['files']} | {r['wall_s']:.1f} | {r['rows_per_s']:,.0f} | "
            f"{r['driver_peak_mb']:.0f} | {r['actor_peak_mb']:.0f} | {r['actors_total_peak_mb']:.0f} | "
            f"{r['dataset_mb']:.1f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
