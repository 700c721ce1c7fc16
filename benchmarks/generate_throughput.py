"""Generation throughput: end-to-end images/s written vs the raw batched decoder, in one run.

Measures, with the same torch thread count everywhere:
  1. raw decoder: `model.decode` on batches of `--batch-size` (latents drawn beforehand), images/s;
  2. where a shard's time goes: decode, decode + uint8 + PNG, full shard (Arrow + Parquet write);
  3. end-to-end in this process (`generate(use_ray=False)`: plan, shards, manifest, commit);
  4. end-to-end on Ray with 1, 2, ... actors (`cpus_per_actor` = `--threads`), actor start-up
     excluded and reported separately.
Each end-to-end run is compared with the mean of the raw-decoder runs just before and after it (the
machine may be shared and its load drift); the table shows medians over `--repeats` such pairs.
Rates per CPU-second divide by the CPU time used (driver + actors), which time-slicing with other
processes does not inflate. Prints a Markdown table and, with `--json`, writes every run.

    python benchmarks/generate_throughput.py --image-size 28 --rows 20000 --threads 1 --actors 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import fsspec
import ray
import torch

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TQDM_DISABLE", "1")
# Ray runs its workers at nice 15; on a machine shared with other work that alone would slow the
# actors against the in-process baseline (nice 0). Compare like with like.
os.environ.setdefault("RAY_worker_niceness", "0")

from pipelines.config import GenerateConfig, PipelineConfig, RayConfig  # noqa: E402
from pipelines.data import DataConfig, load_images  # noqa: E402
from pipelines.generate import generate  # noqa: E402
from pipelines.generate.actors import tune_allocator  # noqa: E402
from pipelines.generate.driver import _sampling_spec  # noqa: E402
from pipelines.generate.plan import make_plan  # noqa: E402
from pipelines.generate.png import PNGEncoder, backend_version, default_backend  # noqa: E402
from pipelines.generate.shard import shard_rows, write_shard  # noqa: E402
from vae.config import VAEConfig  # noqa: E402
from vae.io import load_model, read_model_config, save_model  # noqa: E402
from vae.model import VAE  # noqa: E402
from vae.ranges import to_uint8  # noqa: E402
from vae.training import iterate_batches, make_optimizer, train_epoch  # noqa: E402


def build_model(root: Path, size: int, hidden: tuple[int, ...], latent: int, epochs: int) -> str:
    """Save a seeded conditional VAE (10 classes) trained `epochs` on the digits; return its directory.

    A trained decoder draws digits on a dark background, which PNG compresses like real data (an
    untrained one draws grey noise, the worst case for zlib).
    """
    torch.manual_seed(0)
    model = VAE(VAEConfig(image_size=(size, size), hidden_channels=hidden, latent_dim=latent, num_classes=10))
    if epochs:
        data = load_images(DataConfig(source="digits"), model.cfg)
        opt = make_optimizer(model, lr=2e-3)
        gen = torch.Generator().manual_seed(0)
        for _ in range(epochs):
            train_epoch(
                model, opt, iterate_batches(data.images, data.labels, 128, shuffle=True, generator=gen)
            )
    model.eval()
    path = str(root / "model")
    save_model(model, path, extra={"class_names": [str(k) for k in range(10)]})
    return path


@torch.inference_mode()
def raw_decoder(model: VAE, rows: int, batch: int) -> dict[str, float]:
    """`model.decode` alone over `rows` images in batches of `batch`: images per second and per CPU-second."""
    z = torch.randn(batch, model.cfg.latent_dim)
    y = torch.arange(batch) % 10
    for _ in range(max(1, rows // batch // 4)):  # warm-up: kernels, allocator
        model.decode(z, y)
    t, cpu = time.perf_counter(), time.process_time()
    done = 0
    while done < rows:
        model.decode(z, y)
        done += batch
    return {
        "rows_per_s": done / (time.perf_counter() - t),
        "rows_per_cpu_s": done / (time.process_time() - cpu),
    }


@torch.inference_mode()
def breakdown(model: VAE, cfg: PipelineConfig, model_dir: str) -> dict[str, float]:
    """Images per CPU-second of the stages of one shard: decode, + uint8 + PNG, + Arrow/Parquet write."""
    meta = read_model_config(model_dir)
    plan = make_plan(cfg.generate, model.cfg, meta["extra"]["class_names"])
    sampling, _ = _sampling_spec(cfg, model, meta, plan, None)
    spec = plan.shards[0]
    rows = shard_rows(model, sampling, spec, None)
    enc = PNGEncoder(*model.cfg.image_shape, level=sampling.png_compression, backend=sampling.png_backend)
    t = time.process_time()
    for lo in range(0, spec.rows, sampling.batch_size):
        model.decode(rows.z[lo : lo + sampling.batch_size], rows.labels[lo : lo + sampling.batch_size])
    decode = spec.rows / (time.process_time() - t)
    t = time.process_time()
    for lo in range(0, spec.rows, sampling.batch_size):
        x = model.decode(rows.z[lo : lo + sampling.batch_size], rows.labels[lo : lo + sampling.batch_size])
        enc.encode_batch(to_uint8(x, model.cfg).numpy())
    png = spec.rows / (time.process_time() - t)
    fs = fsspec.filesystem("memory")
    t = time.process_time()
    write_shard(model, sampling, spec, None, fs, "/bench-shard")
    full = spec.rows / (time.process_time() - t)
    fs.rm("/bench-shard", recursive=True)
    return {"decode": decode, "decode+png": png, "full_shard": full, "shard_rows": spec.rows}


def end_to_end(cfg: PipelineConfig, model_dir: str, out: Path, use_ray: bool) -> dict[str, float]:
    """One generation job: rows/s (actor start-up excluded), start-up seconds, rows per CPU-second.

    CPU time counts the driver's whole `generate` call plus, on Ray, the actors' time on shards.
    """
    shutil.rmtree(out, ignore_errors=True)
    cfg.generate.output = str(out)
    cpu = time.process_time()
    res = generate(cfg, model_dir=model_dir, progress=False, use_ray=use_ray)
    driver_cpu = time.process_time() - cpu
    cpu = driver_cpu + (res.cpu_seconds if use_ray else 0.0)
    return {
        "seconds": res.seconds,
        "driver_cpu_s": driver_cpu,
        "writers_cpu_s": res.cpu_seconds,
        "rows_per_s": res.rows_per_s,
        "startup_s": res.startup_seconds,
        "rows": res.rows,
        "rows_per_cpu_s": res.rows / cpu,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--image-size", type=int, default=28)
    ap.add_argument("--hidden", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--latent", type=int, default=16)
    ap.add_argument("--train-epochs", type=int, default=3, help="epochs on the digits before sampling")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--shard-size", type=int, default=5_000)
    ap.add_argument("--png-compression", type=int, default=1)
    ap.add_argument("--actors", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--default-allocator", action="store_true", help="skip tune_allocator() in this process")
    ap.add_argument("--json", type=str, default=None)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    # The actors tune glibc's allocator (see pipelines.generate.actors.tune_allocator); do the same
    # here so the raw decoder and the in-process runs compare like with like.
    result_alloc = tune_allocator() if not args.default_allocator else False
    root = Path(tempfile.mkdtemp(prefix="vaeaug-bench-"))
    model_dir = build_model(root, args.image_size, tuple(args.hidden), args.latent, args.train_epochs)
    model = load_model(model_dir)
    gen = GenerateConfig(
        num_samples=args.rows,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        png_compression=args.png_compression,
        cpus_per_actor=args.threads,
    )
    cfg = PipelineConfig(generate=gen, ray=RayConfig(num_cpus=os.cpu_count()))
    # A private local Ray, even if `ray start` left a cluster running on this machine.
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, configure_logging=False)
    result: dict[str, object] = {
        "args": vars(args),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_before": os.getloadavg(),
        "png_deflate": backend_version(default_backend()),
        "allocator_tuned_in_driver": result_alloc,
    }
    configs = [("in-process", None)] + [(f"Ray, {n} actor(s)", n) for n in args.actors]
    runs: dict[str, list[dict[str, float]]] = {name: [] for name, _ in configs}
    # Every end-to-end run sits between two raw-decoder runs and is compared with their mean, so
    # drifting load on a shared machine affects both sides of each ratio alike.
    raw_prev = raw_decoder(model, args.rows, args.batch_size)
    for _ in range(args.repeats):
        for name, actors in configs:
            cfg.generate.num_actors = actors
            run = end_to_end(cfg, model_dir, root / "out", use_ray=actors is not None)
            raw_next = raw_decoder(model, args.rows, args.batch_size)
            for m in ("rows_per_s", "rows_per_cpu_s"):
                run[f"raw_{m}"] = (raw_prev[m] + raw_next[m]) / 2
                run[f"ratio_{m}"] = run[m] / run[f"raw_{m}"]
            runs[name].append(run)
            raw_prev = raw_next
    result["breakdown"] = breakdown(model, cfg, model_dir)
    median = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    result.update(median=median, runs=runs, load_after=os.getloadavg())
    shutil.rmtree(root, ignore_errors=True)

    size = f"{args.image_size}x{args.image_size}"
    print(f"\n{size} model hidden={args.hidden} latent={args.latent} ({args.train_epochs} epochs on digits),")
    print(f"{args.rows} rows, batch {args.batch_size}, png level {args.png_compression}, ", end="")
    print(f"{args.threads} thread(s) per worker, PNG deflate {result['png_deflate']}; ", end="")
    print(f"medians of {args.repeats} runs\n")
    print("| end-to-end | images/s | raw decoder images/s | ÷ raw (wall) | ÷ raw (per CPU-s) | start-up s |")
    print("|---|---|---|---|---|---|")
    for name, m in median.items():
        print(
            f"| {name} | {m['rows_per_s']:,.0f} | {m['raw_rows_per_s']:,.0f} | {m['ratio_rows_per_s']:.2f} | "
            f"{m['ratio_rows_per_cpu_s']:.2f} | {m['startup_s']:.1f} |"
        )
    bd = result["breakdown"]
    print(
        f"\nOne {int(bd['shard_rows'])}-row shard in-process, images per CPU-s: decode {bd['decode']:,.0f}, ",
        end="",
    )
    print(f"+ uint8 + PNG {bd['decode+png']:,.0f}, full shard (Arrow + Parquet) {bd['full_shard']:,.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
