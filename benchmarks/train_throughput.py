"""Training throughput: Ray Train (1 and 2 workers) vs a plain PyTorch loop, in one run.

For each dataset (digits 8x8; MNIST 28x28 when `../shared/data/MNIST` exists), with the same model,
data, global batch size and T = `--threads` torch threads per process, measures samples/s of:
  a. the plain loop (`fit_local`: `vae.training` in this process, T threads);
  b. Ray Train with 1 worker of T CPUs (T threads): b / a is Ray Train's overhead;
  c. Ray Train with 2 workers of T CPUs each: c / b is the scaling from one worker to two;
  a'. the plain loop again (the machine may be shared: a and a' bracket b and c).
Ray is started with 2 T CPUs.
Two figures per run, both the median over epochs 2..N (epoch 1 and Ray start-up excluded):
  - train: samples / time of the training pass (the `samples_per_s` of each metrics row; for Ray the
    whole job's samples over the slowest worker's time);
  - epoch: samples / wall time between consecutive epochs as seen by the driver (adds held-out
    evaluation, all-reduce, checkpoint, metrics file and report).
Prints a Markdown table; `--json PATH` also writes the numbers.

    python benchmarks/train_throughput.py --epochs 6 --threads 1 --mnist-limit 10000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TQDM_DISABLE", "1")

from pipelines.config import PipelineConfig, RayConfig, config_from_dict  # noqa: E402
from pipelines.data import DataConfig, load_images  # noqa: E402
from pipelines.data.imageset import ImageSet  # noqa: E402
from pipelines.raycluster import ensure_ray  # noqa: E402
from pipelines.training.local import fit_local  # noqa: E402
from pipelines.training.ray_train import train_distributed  # noqa: E402
from vae.config import VAEConfig  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _steady(history: list[dict[str, float]], stamps: list[float], n_train: int) -> dict[str, float]:
    """Median train-pass and wall-clock samples/s over epochs 2..N."""
    train = [row["samples_per_s"] for row in history[1:]]
    epoch = [n_train / (b - a) for a, b in zip(stamps[:-1], stamps[1:], strict=True) if b > a]
    return {"train": statistics.median(train), "epoch": statistics.median(epoch)}


def _cfg(
    name: str, data: DataConfig, model: VAEConfig, args: argparse.Namespace, root: str
) -> PipelineConfig:
    return config_from_dict(
        {
            "data": vars(data),
            "model": model.to_dict(),
            "train": {
                "epochs": args.epochs,
                "min_steps": 0,  # throughput per epoch: exactly one pass each
                "batch_size": args.batch_size,
                "storage_path": f"{root}/runs",
                "run_name": name,
                "use_gpu": False,
                "streaming": "never",
            },
            "output_dir": f"{root}/{name}",
        }
    )


def _plain(cfg: PipelineConfig, data: ImageSet, threads: int, n_train: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    stamps: list[float] = []
    _, history, _ = fit_local(
        cfg, data, on_epoch=lambda row: stamps.append(time.perf_counter()), export=False
    )
    return _steady(history, stamps, n_train)


def _ray(cfg: PipelineConfig, data: ImageSet, workers: int, threads: int, n_train: int) -> dict[str, float]:
    cfg.train.num_workers = workers
    cfg.train.cpus_per_worker = threads
    stamps: list[float] = []
    result = train_distributed(cfg, data, on_epoch=lambda row: stamps.append(time.perf_counter()))
    return _steady(result.history, stamps, n_train)


def bench(label: str, data_cfg: DataConfig, model: VAEConfig, args: argparse.Namespace) -> dict[str, Any]:
    """Run a, b, c, a' on one dataset and return the figures."""
    data = load_images(data_cfg, model)
    n_train = len(data.split(0.1, seed=0)[0])
    out: dict[str, Any] = {"dataset": label, "images": len(data), "train_images": n_train}
    with tempfile.TemporaryDirectory(prefix="train-bench-") as root:
        make = lambda name: _cfg(name, data_cfg, model, args, root)  # noqa: E731
        out["plain"] = _plain(make("plain"), data, args.threads, n_train)
        out["ray1"] = _ray(make("ray1"), data, 1, args.threads, n_train)
        out["ray2"] = _ray(make("ray2"), data, 2, args.threads, n_train)
        out["plain_again"] = _plain(make("plain2"), data, args.threads, n_train)
    for kind in ("train", "epoch"):
        base = (out["plain"][kind] + out["plain_again"][kind]) / 2
        out[f"ray1_over_plain_{kind}"] = out["ray1"][kind] / base
        out[f"ray2_over_ray1_{kind}"] = out["ray2"][kind] / out["ray1"][kind]
    return out


def _table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| dataset | figure | plain (a / a') | Ray 1 worker (b) | Ray 2 workers (c) | b / a | c / b |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for kind in ("train", "epoch"):
            lines.append(
                f"| {r['dataset']} ({r['train_images']} train) | {kind} | {r['plain'][kind]:.0f} / "
                f"{r['plain_again'][kind]:.0f} | {r['ray1'][kind]:.0f} | {r['ray2'][kind]:.0f} | "
                f"{r[f'ray1_over_plain_{kind}']:.2f} | {r[f'ray2_over_ray1_{kind}']:.2f} |"
            )
    return "\n".join(lines)


def main() -> None:
    """Parse arguments, run the benchmark, print the table (and write JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6, help="epochs per run (the first is excluded)")
    parser.add_argument("--batch-size", type=int, default=128, help="global batch size")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (T)")
    parser.add_argument("--mnist-limit", type=int, default=10000, help="MNIST images used (0: skip MNIST)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    cluster = ensure_ray(RayConfig(num_cpus=2 * args.threads))  # start-up excluded from every figure
    runs = [("digits 8x8", DataConfig(source="digits"), VAEConfig(image_size=(8, 8)))]
    if args.mnist_limit and (SHARED / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        mnist = DataConfig(source="mnist", path=str(SHARED), limit=args.mnist_limit)
        runs.append(("MNIST 28x28", mnist, VAEConfig(image_size=(28, 28))))
    load_before = os.getloadavg()[0]
    results = [bench(label, d, m, args) for label, d, m in runs]
    header = (
        f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs visible, Ray CPUs "
        f"{cluster.num_cpus:g}, threads {args.threads}, epochs {args.epochs}, batch {args.batch_size}, "
        f"load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after"
    )
    print(header)
    print(_table(results))
    if args.json:
        args.json.write_text(json.dumps({"setup": header, "results": results}, indent=2))


if __name__ == "__main__":
    main()
