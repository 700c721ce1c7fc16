"""The Ray actor that holds the decoder and writes shards.

Each actor loads the model once (on its GPU when it has one), keeps the real images it may need,
and turns shard specs into Parquet files. It returns only a small `ShardStats`: rows never travel
back to the driver.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

import fsspec
import torch
from fsspec import AbstractFileSystem

from pipelines.generate.commit import open_fs
from pipelines.generate.plan import Piece, ShardSpec, SourceImages
from pipelines.generate.shard import SamplingSpec, ShardStats, write_shard
from vae.io import load_model
from vae.model import VAE

#: glibc `mallopt` parameters and the values `tune_allocator` sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's maximum
TRIM_THRESHOLD_BYTES = 512 * 1024 * 1024


def tune_allocator() -> bool:
    """Let glibc reuse freed heap memory for the decoder's large activations instead of mmapping.

    By default glibc serves each allocation above ~128 KiB-32 MiB with a fresh mmap, so every decoder
    batch page-faults and zeroes its activations again; on CPU that halves the decoder's throughput
    (measured in BENCHMARKS.md). Raising the mmap threshold to its maximum (32 MiB) and keeping up
    to 512 MiB of free heap makes repeated batches reuse memory. Memory stays bounded (by the batch's
    working set plus the trim threshold); it does not grow with the number of rows.

    Returns:
        Whether the settings were applied (False off glibc, e.g. macOS or musl).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
        return ok and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    except (OSError, AttributeError):
        return False


class ShardWriter:
    """Decoder + output filesystem of one worker (used as a Ray actor, or directly in-process).

    Args:
        model_dir: the saved model (local path or fsspec URL).
        model_storage_options: fsspec options for `model_dir`.
        sampling: the job's shared settings.
        output_url: the dataset directory.
        storage_options: fsspec options for `output_url` (credentials stay in memory).
        sources: the real images for variants / interpolations, or None.
        threads: torch intra-op threads of this worker.
        use_gpu: decode on CUDA when available.
    """

    def __init__(
        self,
        model_dir: str,
        model_storage_options: dict[str, Any],
        sampling: SamplingSpec,
        output_url: str,
        storage_options: dict[str, Any],
        sources: SourceImages | None,
        threads: int,
        use_gpu: bool,
    ) -> None:
        torch.set_num_threads(max(1, threads))
        tune_allocator()
        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.model = load_model(model_dir, map_location=device, storage_options=model_storage_options)
        self.judge = None
        if sampling.curation_threshold is not None:
            from pipelines.usefulness.judge import load_judge

            self.judge = load_judge(model_dir, model_storage_options, map_location=device)
        self.sampling = sampling
        self.sources = sources
        self.fs, self.root = open_fs(output_url, storage_options)
        self._warm_up()

    @torch.inference_mode()
    def _warm_up(self) -> None:
        """Run the shard path once (a full decoder batch, a 1-row shard in memory) at start-up.

        Moves one-time costs (kernel selection, buffer allocation, lazy imports such as pyarrow's of
        pandas) out of the first real shard, so start-up and throughput are reported apart.
        """
        cfg = self.model.cfg
        z = torch.zeros(
            self.sampling.batch_size, cfg.latent_dim, device=self.model.device, dtype=self.model.fc_dtype
        )
        y = (
            torch.zeros(self.sampling.batch_size, dtype=torch.long, device=self.model.device)
            if cfg.conditional
            else None
        )
        self.model.decode(z, y)  # (B, C, H, W)
        fs = fsspec.filesystem("memory")
        root = f"/vaeaug-warm-up-{os.getpid()}"
        write_shard(self.model, self.sampling, ShardSpec(0, 0, (Piece("prior", 0, 1),)), None, fs, root)
        fs.rm(root, recursive=True)

    @classmethod
    def in_process(
        cls,
        model: VAE,
        sampling: SamplingSpec,
        sources: SourceImages | None,
        fs: AbstractFileSystem,
        root: str,
        judge: torch.nn.Module | None = None,
    ) -> ShardWriter:
        """A writer around an already loaded model (and judge), for the single-process path (no Ray)."""
        self = cls.__new__(cls)
        self.model, self.sampling, self.sources, self.fs, self.root = model, sampling, sources, fs, root
        self.judge = judge
        return self

    def write(self, spec: ShardSpec) -> ShardStats:
        """Generate and write one shard.

        Args:
            spec: the shard.

        Returns:
            Its `ShardStats` (with this process's id and peak RSS).
        """
        return write_shard(self.model, self.sampling, spec, self.sources, self.fs, self.root, self.judge)

    def ready(self) -> str:
        """Round trip used to wait for the actor to start; returns the decoder's device."""
        return str(self.model.device)


def remote_writer_class() -> Any:
    """`ShardWriter` as a Ray actor class (Ray imported lazily)."""
    import ray

    return ray.remote(ShardWriter)


__all__ = ["ShardWriter", "remote_writer_class", "tune_allocator"]
