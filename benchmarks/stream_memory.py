"""Streaming input (issue 10): peak memory of the driver and the Ray Train worker vs the source's size,
and the streaming path's speed against the in-memory path on MNIST.

Part 1, memory. For each source and size N (synthetic 8x8 grayscale PNGs of 10 classes), one epoch of
`train_distributed` on the streaming path (train.backend ray, 1 worker of `--cpus-per-worker` CPUs,
streaming "always", epochs 1, min_steps 0, batch 256, val_fraction 0.1, model widths 16, 32, latent 8)
runs in a fresh Python process with a fresh local Ray (2 CPUs), so every peak is that run's own:
  - driver peak: that process's VmHWM (imports, Ray client, listing, sample, export included; not
    `ru_maxrss`, which after exec starts from the parent's RSS, here the moto server's);
  - worker peak: the RayTrainWorker process's VmHWM (the kernel's peak RSS), read every 0.2 s by a
    sampler thread in the driver from the driver's descendants; also the largest VmHWM of the Ray
    worker processes seen running Ray Data's decode tasks ("decode task peak").
Sources: "folder" and "parquet" on local disk, "s3-parquet" and "s3-folder" on a moto S3 server (run
by this script's parent process, so its memory is in neither peak; the children and Ray's workers
find it through AWS_ENDPOINT_URL). Parquet is the Hugging Face layout (image struct<bytes, path> +
int64 label), row groups of 10,000 rows, 1 to 10 files. "s3-folder" (one object per image) runs only
up to `--s3-folder-max` images: moto serves some hundred requests/s. The images are made once and
cached under `--root` (default /tmp/streambench): delete it when done.

Part 2, speed (`--mnist`): the 60,000 MNIST training images (../shared/data/MNIST/raw) written once as
a folder of PNGs; model widths 32, 64, latent 16, 28x28x1, batch 128, 1 worker, 2 epochs, each of
streaming "never" (all images loaded in the driver and put in the object store) and "always" in a
fresh process; the ratio is epoch 2's `samples_per_s` streamed / in memory (epoch 1 has start-up).

Prints Markdown tables and the ratios; `--json PATH` also writes every figure.

    .venv/bin/python benchmarks/stream_memory.py --sizes 10000 100000 1000000 \\
        --sources folder parquet s3-parquet s3-folder --s3-folder-max 10000 --mnist --json out.json

(BENCHMARKS.md, "Streaming input": that command took 33 min on 2 shared cores with the images cached;
s3-folder at 10^5 would add ~25 min.)
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_worker_niceness", "0")  # Ray's default (15) is slow on a shared machine
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("TQDM_DISABLE", "1")

SOURCES = ("folder", "parquet", "s3-parquet", "s3-folder")
#: s3-folder is one object per image (a HEAD and a GET each): moto serves some hundred requests/s.
S3_FOLDER_MAX = 100_000
CHUNK = 10_000  # images per generation job, and rows per Parquet row group
CLASSES = 10
MNIST_RAW = Path(__file__).resolve().parents[2] / "shared" / "data" / "MNIST" / "raw"
BUCKET = "streambench"
CHILD_TIMEOUT_S = 1800


# --------------------------------------------------------------------------------------- the data
def _png(pixels: np.ndarray) -> bytes:
    """One (H, W) uint8 array as PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, "L").save(buf, format="PNG")
    return buf.getvalue()


def _synth_chunk(job: tuple[int, int, str]) -> tuple[np.ndarray, list[bytes]]:
    """Images [start, start + count): random 8x8 pixels and labels, written to `folder` as PNG files.

    Returns:
        (count,) int64 labels and the PNG bytes, for the Parquet copy.
    """
    start, count, folder = job
    rng = np.random.default_rng([7, start])
    pixels = rng.integers(0, 256, size=(count, 8, 8), dtype=np.uint8)  # (n, H, W)
    labels = rng.integers(0, CLASSES, size=count).astype(np.int64)
    blobs = [_png(p) for p in pixels]
    for i, (label, blob) in enumerate(zip(labels.tolist(), blobs, strict=True)):
        Path(folder, str(label), f"{start + i:07d}.png").write_bytes(blob)
    return labels, blobs


def _hf_table(labels: np.ndarray, blobs: list[bytes], start: int) -> Any:
    """Rows in the Hugging Face image layout: image struct<bytes, path>, int64 label."""
    import pyarrow as pa

    kind = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
    images = pa.StructArray.from_arrays(
        [pa.array(blobs, pa.binary()), pa.array([f"{start + i:07d}.png" for i in range(len(blobs))])],
        fields=list(kind),
    )
    return pa.table({"image": images, "label": pa.array(labels, pa.int64())})


def prepare_synthetic(root: Path, n: int) -> Path:
    """`root/synth-{n}/{folder,parquet}` with n images (made once; reused while `ready.json` is there)."""
    import pyarrow.parquet as pq

    base = root / f"synth-{n}"
    if (base / "ready.json").exists():
        return base
    shutil.rmtree(base, ignore_errors=True)
    for k in range(CLASSES):
        (base / "folder" / str(k)).mkdir(parents=True)
    (base / "parquet").mkdir()
    files = min(10, max(1, n // 20_000))
    per_file = -(-n // files // CHUNK) * CHUNK  # whole row groups per file
    started = time.perf_counter()
    jobs = [(s, min(CHUNK, n - s), str(base / "folder")) for s in range(0, n, CHUNK)]
    writer, current = None, -1
    with Pool(2) as pool:
        for (start, _, _), (labels, blobs) in zip(jobs, pool.imap(_synth_chunk, jobs), strict=True):
            table = _hf_table(labels, blobs, start)
            if start // per_file != current:
                if writer is not None:
                    writer.close()
                current = start // per_file
                writer = pq.ParquetWriter(base / "parquet" / f"part-{current:03d}.parquet", table.schema)
            writer.write_table(table, row_group_size=CHUNK)
    if writer is not None:
        writer.close()
    seconds = time.perf_counter() - started
    (base / "ready.json").write_text(json.dumps({"images": n, "files": files, "seconds": seconds}))
    return base


def _mnist_chunk(job: tuple[int, str, str]) -> None:
    """Write MNIST training images [start, start + CHUNK) as PNG files of their class folders."""
    start, raw, folder = job
    images = np.fromfile(Path(raw, "train-images-idx3-ubyte"), np.uint8, offset=16).reshape(-1, 28, 28)
    labels = np.fromfile(Path(raw, "train-labels-idx1-ubyte"), np.uint8, offset=8)
    for i in range(start, min(start + CHUNK, len(labels))):
        Path(folder, str(labels[i]), f"{i:05d}.png").write_bytes(_png(images[i]))


def prepare_mnist(root: Path) -> Path:
    """`root/mnist/folder`: the 60,000 MNIST training images as PNGs in one folder per class (once)."""
    base = root / "mnist"
    if (base / "ready.json").exists():
        return base / "folder"
    shutil.rmtree(base, ignore_errors=True)
    for k in range(CLASSES):
        (base / "folder" / str(k)).mkdir(parents=True)
    with Pool(2) as pool:
        pool.map(_mnist_chunk, [(s, str(MNIST_RAW), str(base / "folder")) for s in range(0, 60_000, CHUNK)])
    (base / "ready.json").write_text(json.dumps({"images": 60_000}))
    return base / "folder"


class S3Server:
    """A moto S3 server in this (parent) process, its env exported for the children and their Ray."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        os.environ.update(
            {
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ENDPOINT_URL_S3": endpoint,
            }
        )
        import boto3

        self.client = boto3.client("s3", endpoint_url=endpoint)
        self.client.create_bucket(Bucket=BUCKET)
        self.uploaded: dict[str, float] = {}  # prefix -> upload seconds

    def upload(self, local: Path, prefix: str) -> str:
        """Copy the files below `local` to s3://BUCKET/prefix (once) and return that URL."""
        if prefix not in self.uploaded:
            started = time.perf_counter()
            files = [p for p in local.rglob("*") if p.is_file()]

            def put(path: Path) -> None:
                key = f"{prefix}/{path.relative_to(local).as_posix()}"
                self.client.put_object(Bucket=BUCKET, Key=key, Body=path.read_bytes())

            with ThreadPoolExecutor(16) as pool:
                list(pool.map(put, files))
            self.uploaded[prefix] = time.perf_counter() - started
        return f"s3://{BUCKET}/{prefix}"

    def stop(self) -> None:
        self.server.stop()


# ------------------------------------------------------------------------------ one run (a child)
def _status_kb(pid: int, field: str) -> int:
    """A "VmHWM"/"VmRSS" line of /proc/pid/status in kB (0 when the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class PeakSampler(threading.Thread):
    """Every 0.2 s, the peak RSS (VmHWM) and the largest sampled RSS of this process's Ray workers.

    Attributes:
        peaks: pid -> {"titles": every process title seen, "hwm_kb": VmHWM, "rss_kb": max sampled RSS},
            for every `ray::` process below this one (a worker's title changes with its task or actor).
    """

    def __init__(self, every_s: float = 0.2) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.every_s, self.done = every_s, threading.Event()
        self.peaks: dict[int, dict[str, Any]] = {}

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self.done.is_set():
            for proc in me.children(recursive=True):
                try:
                    title = " ".join(proc.cmdline())
                    rss = proc.memory_info().rss // 1024
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                if not title.startswith("ray::"):
                    continue
                seen = self.peaks.setdefault(proc.pid, {"titles": set(), "hwm_kb": 0, "rss_kb": 0})
                seen["titles"].add(title.split(" ")[0][:80])
                seen["hwm_kb"] = max(seen["hwm_kb"], _status_kb(proc.pid, "VmHWM"))
                seen["rss_kb"] = max(seen["rss_kb"], rss)
            self.done.wait(self.every_s)

    def summary(self) -> dict[str, Any]:
        """Peaks in MB: the train worker(s), and the largest Ray worker that ran Ray Data's decode tasks."""

        def ran(p: dict[str, Any], name: str) -> bool:
            return any(name in t for t in p["titles"])

        train = [p for p in self.peaks.values() if ran(p, "RayTrainWorker")]
        data = [p for p in self.peaks.values() if ran(p, "MapBatches") and not ran(p, "RayTrainWorker")]
        return {
            "worker_peak_mb": max((p["hwm_kb"] for p in train), default=0) / 1024,
            "worker_sampled_max_mb": max((p["rss_kb"] for p in train), default=0) / 1024,
            "train_workers": len(train),
            "data_task_peak_mb": max((p["hwm_kb"] for p in data), default=0) / 1024,
            "data_task_processes": len(data),
        }


def _run_cfg(spec: dict[str, Any], tmp: str) -> Any:
    """The run's `PipelineConfig` (synthetic: 8x8, tiny model, 1 epoch; mnist: 28x28, 2 epochs)."""
    from pipelines.config import config_from_dict

    mnist = spec["kind"] == "mnist"
    return config_from_dict(
        {
            "data": {"source": spec["source"], "path": spec["path"]},
            "model": {
                "image_size": [28, 28] if mnist else [8, 8],
                "channels": 1,
                "hidden_channels": [32, 64] if mnist else [16, 32],
                "latent_dim": 16 if mnist else 8,
            },
            "train": {
                "backend": "ray",
                "num_workers": 1,
                "cpus_per_worker": spec["cpus_per_worker"],
                "streaming": spec["streaming"],
                "epochs": 2 if mnist else 1,
                "min_steps": 0,
                "batch_size": 128 if mnist else 256,
                "val_fraction": 0.1,
                "use_gpu": False,
                "storage_path": f"{tmp}/runs",
            },
            "output_dir": f"{tmp}/out",
        }
    )


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One `train_distributed` run in this fresh process, with a fresh local Ray; returns its figures."""
    import ray

    from pipelines.data.stream import load_data_for
    from pipelines.raycluster import loopback_only
    from pipelines.training.ray_train import train_distributed

    with loopback_only():
        ray.init(
            address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False
        )
    before_mb = _status_kb(os.getpid(), "VmHWM") / 1024
    sampler = PeakSampler()
    sampler.start()
    stamps: list[float] = []
    with tempfile.TemporaryDirectory(prefix="streambench-run-") as tmp:
        cfg = _run_cfg(spec, tmp)
        started = time.perf_counter()
        # The driver's listing (and sample) is loaded inside the timed part, as train_distributed did.
        result = train_distributed(
            cfg, load_data_for(cfg), on_epoch=lambda row: stamps.append(time.perf_counter())
        )
        wall = time.perf_counter() - started
    time.sleep(0.5)  # one more sample of the workers (they are gone once `fit` returns, mostly)
    sampler.done.set()
    sampler.join()
    # VmHWM, not ru_maxrss: after exec, ru_maxrss starts from the parent's RSS at fork time.
    driver_mb = _status_kb(os.getpid(), "VmHWM") / 1024
    maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ray.shutdown()
    last = result.history[-1]
    return {
        **spec,
        "driver_peak_mb": driver_mb,
        "driver_ru_maxrss_mb": maxrss_mb,
        "driver_before_run_mb": before_mb,
        **sampler.summary(),
        "run_wall_s": wall,
        "epoch_stamps_s": [s - started for s in stamps],
        "samples_per_s": [row["samples_per_s"] for row in result.history],
        "last_samples_per_s": last["samples_per_s"],
        "val_loss": last.get("val_loss"),
    }


# ------------------------------------------------------------------------------------- the parent
def spawn(spec: dict[str, Any], logs: Path) -> dict[str, Any]:
    """Run `child(spec)` in a fresh interpreter; its output goes to `logs`/<name>.log."""
    name = f"{spec['kind']}-{spec['source_label']}-{spec.get('images', spec['streaming'])}"
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    started = time.perf_counter()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"no result within {CHILD_TIMEOUT_S} s"}
    (logs / f"{name}.log").write_text(out.stdout + "\n--- stderr ---\n" + out.stderr)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        tail = "\n".join(out.stderr.strip().splitlines()[-15:])
        return {**spec, "error": f"exit {out.returncode}: {tail}"}
    result = json.loads(line[len("RESULT ") :])
    result["process_wall_s"] = time.perf_counter() - started
    result["path_taken"] = "streamed" if "streamed from storage" in out.stdout else "in memory"
    return result


def _synth_specs(args: argparse.Namespace, root: Path, s3: S3Server | None) -> list[dict[str, Any]]:
    """One run per (size, source) asked for (s3-folder only up to `S3_FOLDER_MAX` images)."""
    specs = []
    for n in args.sizes:
        base = prepare_synthetic(root, n)
        for source in args.sources:
            if source == "s3-folder" and n > args.s3_folder_max:
                continue
            layout = source.removeprefix("s3-")
            path = str(base / layout)
            if source.startswith("s3-"):
                assert s3 is not None
                path = s3.upload(base / layout, f"synth-{n}/{layout}")
            specs.append(
                {
                    "kind": "synth",
                    "images": n,
                    "source_label": source,
                    "source": layout,
                    "path": path,
                    "streaming": "always",
                    "cpus_per_worker": args.cpus_per_worker,
                }
            )
    return specs


def _train_images(n: int) -> int:
    return n - round(n * 0.1)


def memory_rows(results: list[dict[str, Any]]) -> list[str]:
    """The memory table, Markdown."""
    lines = [
        "| images | source | driver peak MB | worker peak MB | decode task peak MB | train pass s | "
        "samples/s | run wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['images']:,} | {r['source_label']} | failed: {r['error'][-200:]} |||||")
            continue
        sps = r["last_samples_per_s"]
        lines.append(
            f"| {r['images']:,} | {r['source_label']} | {r['driver_peak_mb']:.0f} | "
            f"{r['worker_peak_mb']:.0f} | {r['data_task_peak_mb']:.0f} | "
            f"{_train_images(r['images']) / sps:.1f} | {sps:,.0f} | {r['run_wall_s']:.1f} |"
        )
    return lines


def memory_ratios(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per source: driver and worker peak at the largest size over the smallest."""
    out: dict[str, dict[str, float]] = {}
    ok = [r for r in results if "error" not in r]
    for source in dict.fromkeys(r["source_label"] for r in ok):
        rows = sorted((r for r in ok if r["source_label"] == source), key=lambda r: r["images"])
        if len(rows) < 2:
            continue
        small, big = rows[0], rows[-1]
        out[source] = {
            "from": small["images"],
            "to": big["images"],
            "driver": big["driver_peak_mb"] / small["driver_peak_mb"],
            "worker": big["worker_peak_mb"] / small["worker_peak_mb"],
        }
    return out


def mnist_runs(args: argparse.Namespace, root: Path, logs: Path) -> dict[str, Any]:
    """MNIST as a folder: in memory, then streamed, each in a fresh process; epoch 2's samples/s."""
    folder = prepare_mnist(root)
    runs = {}
    for mode in ("never", "always"):
        spec = {
            "kind": "mnist",
            "source_label": "mnist-folder",
            "source": "folder",
            "path": str(folder),
            "streaming": mode,
            "cpus_per_worker": args.cpus_per_worker,
        }
        runs[mode] = spawn(spec, logs)
        print(f"mnist streaming={mode}: {json.dumps(runs[mode])[:400]}", flush=True)
    out: dict[str, Any] = {"runs": runs}
    if all("error" not in r for r in runs.values()):
        train = _train_images(60_000)
        for mode, r in runs.items():
            stamps = r["epoch_stamps_s"]
            out[f"{mode}_epoch2_samples_per_s"] = r["samples_per_s"][1]
            out[f"{mode}_epoch2_wall_samples_per_s"] = train / (stamps[1] - stamps[0])
        out["ratio_train"] = out["always_epoch2_samples_per_s"] / out["never_epoch2_samples_per_s"]
        out["ratio_wall"] = out["always_epoch2_wall_samples_per_s"] / out["never_epoch2_wall_samples_per_s"]
    return out


def _setup_line(args: argparse.Namespace, load_before: float) -> str:
    """Versions (from the package metadata: this process stays small, see `child`) and the load."""
    from importlib.metadata import version

    return (
        f"{platform.machine()}, {os.cpu_count()} CPUs, torch {version('torch')}, Ray {version('ray')}, "
        f"Ray CPUs 2, 1 worker x {args.cpus_per_worker} CPU, load average {load_before:.1f} before / "
        f"{os.getloadavg()[0]:.1f} after"
    )


def main() -> None:
    """Parse arguments, make the data, run every child, print the tables (and write JSON)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--sources", nargs="+", choices=SOURCES, default=list(SOURCES))
    ap.add_argument("--mnist", action=argparse.BooleanOptionalAction, default=True, help="part 2")
    ap.add_argument("--s3-folder-max", type=int, default=S3_FOLDER_MAX, help="largest s3-folder size")
    ap.add_argument("--cpus-per-worker", type=int, default=1, help="CPUs (torch threads) of the worker")
    ap.add_argument("--root", type=Path, default=Path("/tmp/streambench"), help="cache of the images")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print("RESULT " + json.dumps(child(json.loads(args.child))), flush=True)
        return
    started = time.perf_counter()
    logs = args.root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    s3 = S3Server() if any(s.startswith("s3-") for s in args.sources) else None
    load_before = os.getloadavg()[0]
    try:
        results = []
        for spec in _synth_specs(args, args.root, s3):
            results.append(spawn(spec, logs))
            print(json.dumps(results[-1])[:600], flush=True)
        mnist = mnist_runs(args, args.root, logs) if args.mnist and MNIST_RAW.exists() else None
    finally:
        if s3 is not None:
            s3.stop()
    setup = _setup_line(args, load_before)
    report = {
        "setup": setup,
        "memory": results,
        "ratios": memory_ratios(results),
        "mnist": mnist,
        "s3_upload_s": s3.uploaded if s3 else {},
        "total_s": time.perf_counter() - started,
    }
    print(setup)
    print("\n".join(memory_rows(results)))
    for source, r in report["ratios"].items():
        print(
            f"{source}: driver peak {r['to']:,} / {r['from']:,} = {r['driver']:.2f}, worker {r['worker']:.2f}"
        )
    if mnist and "ratio_train" in mnist:
        train, wall = mnist["ratio_train"], mnist["ratio_wall"]
        print(f"MNIST epoch 2 samples/s streamed / in memory: train pass {train:.2f}, epoch wall {wall:.2f}")
    print(f"total {report['total_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
