"""One shard: (model, shard spec, real images) -> latents -> images -> PNG -> one Parquet file.

A pure function of its inputs: the randomness comes from a generator seeded by (seed, shard index)
only, latents are drawn on the CPU in one go for the whole shard (independent of the decoder batch
size and device), row groups have a fixed number of rows, and the file name is derived from the
shard index. Writing the same shard twice gives the same bytes, which makes retries safe.
"""

from __future__ import annotations

import hashlib
import os
import resource
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from fsspec import AbstractFileSystem

from pipelines.dataset_format import DATA_DIR, shard_path
from pipelines.generate.curation import CurationCounts, curated_latents
from pipelines.generate.plan import Piece, ShardSpec, SourceImages
from pipelines.generate.png import PNGEncoder
from pipelines.generate.schema import COMPRESSION, IMAGE_TYPE
from pipelines.storage import join
from vae.model import VAE
from vae.ranges import to_uint8


@dataclass
class SamplingSpec:
    """How every shard of a generation samples and writes its rows (sent once to each actor).

    Args:
        job_id: short hash of the job's content; prefix of every `sample_id`.
        seed: the job seed; shard i uses a generator seeded from (seed, i).
        num_shards: number of shards (part of the file names).
        temperature: prior scale of "prior" and "class" rows.
        variant_temperature: posterior noise scale of "variant" rows.
        variants_per_image: k, the variants per source image.
        interpolation_steps: rows per interpolation.
        batch_size: decoder batch size.
        png_compression: zlib level of the PNGs.
        row_group_rows: rows per Parquet row group.
        schema: the Arrow schema (with metadata) of every file.
        png_backend: deflate library of the PNGs ("zlib" or "zlib-ng"), the same for every worker.
        curation_threshold: keep "prior"/"class" rows only when the judge gives their label at least
            this probability (redrawing the others); None: no curation.
        curation_max_rounds: redraw rounds before a row keeps its best candidate.
    """

    job_id: str
    seed: int
    num_shards: int
    temperature: float
    variant_temperature: float
    variants_per_image: int
    interpolation_steps: int
    batch_size: int
    png_compression: int
    row_group_rows: int
    schema: pa.Schema
    png_backend: str = "zlib"
    curation_threshold: float | None = None
    curation_max_rounds: int = 50


@dataclass
class ShardStats:
    """What a written shard reports back (small: the driver keeps one per shard)."""

    index: int
    path: str  # relative to the dataset directory
    rows: int
    bytes: int
    sha256: str
    row_groups: int
    label_counts: dict[int, int] = field(default_factory=dict)
    method_counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # CPU time of the writing process (all its threads) for this shard
    peak_rss_mb: float = 0.0  # of the writing process so far
    pid: int = 0  # the writing process
    curation: CurationCounts | None = None  # per class: tried / accepted / fallback (curated jobs)


def shard_generator(seed: int, index: int) -> torch.Generator:
    """CPU generator seeded from (seed, shard index) only."""
    state = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint32)
    return torch.Generator(device="cpu").manual_seed(int(state[0]) << 32 | int(state[1]))


@dataclass
class ShardRows:
    """The per-row content of a shard before decoding."""

    z: torch.Tensor  # (N, D) float32 on the CPU
    labels: torch.Tensor | None  # (N,) int64, None for an unconditional model
    methods: list[str]
    source_ids: list[str | None]
    target_ids: list[str | None]


def _encode_mu(model: VAE, src: SourceImages, idx: torch.Tensor, batch: int) -> tuple[torch.Tensor, ...]:
    """Posterior (mu, logvar) (n, D) of source images `idx`, encoded in batches on the model's device."""
    mus, logvars = [], []
    labels = src.labels  # (M,) int64
    for lo in range(0, len(idx), batch):
        sel = idx[lo : lo + batch]
        x = src.images[sel].to(model.device)  # (b, C, H, W)
        y = labels[sel].to(model.device) if model.cfg.conditional else None
        post = model.encode(x, y)
        mus.append(post.mu.float().cpu())
        logvars.append(post.logvar.float().cpu())
    return torch.cat(mus), torch.cat(logvars)


def _sampled_rows(
    model: VAE, sampling: SamplingSpec, piece: Piece, gen: torch.Generator, curate: Curate | None
):
    """(z (n, D), labels (n,) or None) of a "prior" or "class" piece."""
    n, d = piece.count, model.cfg.latent_dim
    k_classes = model.cfg.num_classes
    labels = None
    if k_classes is not None:
        rows = torch.arange(piece.offset, piece.offset + n)  # (n,) positions within the segment
        labels = rows % k_classes if piece.method == "prior" else torch.full((n,), int(piece.label or 0))
    if curate is not None and labels is not None and sampling.curation_threshold is not None:
        z, counts = curated_latents(
            model, curate.judge, labels, gen, sampling.temperature, sampling.curation_threshold,
            sampling.batch_size, sampling.curation_max_rounds,
        )  # fmt: skip
        curate.counts.update(counts)
        return z, labels
    eps = torch.randn((n, d), generator=gen)  # (n, D)
    return model.draw_latents(eps, labels, sampling.temperature).float().cpu(), labels


@dataclass
class Curate:
    """The judge of a curated job and the counts of the shard being written."""

    judge: torch.nn.Module
    counts: CurationCounts = field(default_factory=CurationCounts)


def _piece_rows(
    model: VAE,
    sampling: SamplingSpec,
    piece: Piece,
    gen: torch.Generator,
    src: SourceImages | None,
    curate: Curate | None,
):
    """(z (n, D), labels (n,) or None, source ids, target ids) of one piece, drawing from `gen`."""
    n, d = piece.count, model.cfg.latent_dim
    k_classes = model.cfg.num_classes
    rows = torch.arange(piece.offset, piece.offset + n)  # (n,) positions within the segment
    none: list[str | None] = [None] * n
    if piece.method in ("prior", "class"):
        z, labels = _sampled_rows(model, sampling, piece, gen, curate)
        return z, labels, none, none
    assert src is not None, "variant/interpolation rows need the source images"
    if piece.method == "variant":
        which = rows // sampling.variants_per_image  # (n,) source image of each row
        uniq, inverse = torch.unique(which, return_inverse=True)
        mu, logvar = _encode_mu(model, src, uniq, sampling.batch_size)  # (u, D) each
        eps = torch.randn((n, d), generator=gen)  # (n, D)
        z = mu[inverse] + sampling.variant_temperature * torch.exp(0.5 * logvar[inverse]) * eps
        ids: list[str | None] = [src.ids[i] for i in which.tolist()]
        labels = src.labels[which] if k_classes is not None else None
        return z, labels, ids, none
    # interpolation: row r is step r % steps of pair r // steps, on the line between posterior means
    steps = sampling.interpolation_steps
    pair = rows // steps  # (n,)
    t = (rows % steps).float().unsqueeze(1) / (steps - 1)  # (n, 1) in [0, 1]
    ends = torch.from_numpy(np.array(src.pairs, dtype=np.int64))[
        pair
    ]  # (n, 2) positions into the source images
    uniq, inverse = torch.unique(ends.reshape(-1), return_inverse=True)
    mu, _ = _encode_mu(model, src, uniq, sampling.batch_size)  # (u, D)
    mu_ends = mu[inverse].reshape(n, 2, d)  # (n, 2, D)
    z = (1 - t) * mu_ends[:, 0] + t * mu_ends[:, 1]  # (n, D)
    labels = src.labels[ends[:, 0]] if k_classes is not None else None
    a_ids: list[str | None] = [src.ids[i] for i in ends[:, 0].tolist()]
    b_ids: list[str | None] = [src.ids[i] for i in ends[:, 1].tolist()]
    return z, labels, a_ids, b_ids


@torch.inference_mode()
def shard_rows(
    model: VAE,
    sampling: SamplingSpec,
    spec: ShardSpec,
    sources: SourceImages | None,
    curate: Curate | None = None,
) -> ShardRows:
    """The latents, labels and provenance columns of every row of a shard (nothing decoded yet).

    Args:
        model: the VAE (eval mode, any device).
        sampling: the job's shared settings.
        spec: which rows.
        sources: the real images, for variant and interpolation rows.
        curate: the judge (and counts) when `sampling.curation_threshold` is set.

    Returns:
        `ShardRows` with z (N, D) float32 on the CPU.
    """
    gen = shard_generator(sampling.seed, spec.index)
    zs, labels, methods, sources_ids, target_ids = [], [], [], [], []
    for piece in spec.pieces:
        z, y, a, b = _piece_rows(model, sampling, piece, gen, sources, curate)
        zs.append(z.float())
        labels.append(y)
        methods += [piece.method] * piece.count
        sources_ids += a
        target_ids += b
    y_all = None if any(y is None for y in labels) else torch.cat(labels).long()
    return ShardRows(torch.cat(zs), y_all, methods, sources_ids, target_ids)


class _HashingSink:
    """Forwards writes to a file object while counting and hashing them (for the manifest)."""

    def __init__(self, f: Any) -> None:
        self._f = f
        self.sha = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        self._f.write(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:  # the caller closes the underlying file
        self.closed = True


def _table(
    sampling: SamplingSpec, rows: ShardRows, pngs: list[bytes], first_row: int, lo: int, hi: int
) -> pa.Table:
    """Rows [lo, hi) of the shard as an Arrow table with the job's schema."""
    ids = [f"{sampling.job_id}-{first_row + r:010d}" for r in range(lo, hi)]
    image = pa.StructArray.from_arrays(
        [pa.array(pngs, pa.binary()), pa.array([f"{i}.png" for i in ids], pa.string())],
        fields=list(IMAGE_TYPE),
    )
    z = rows.z[lo:hi].numpy()  # (n, D) float32
    latent = pa.FixedSizeListArray.from_arrays(pa.array(z.reshape(-1), pa.float32()), z.shape[1])
    if rows.labels is None:
        label = pa.nulls(hi - lo, pa.int64())
    else:
        label = pa.array(rows.labels[lo:hi].numpy(), pa.int64())
    cols = [
        image,
        latent,
        label,
        pa.array(ids, pa.string()),
        pa.array(rows.methods[lo:hi], pa.string()),
        pa.array(rows.source_ids[lo:hi], pa.string()),
        pa.array(rows.target_ids[lo:hi], pa.string()),
    ]
    return pa.Table.from_arrays(cols, schema=sampling.schema)


@torch.inference_mode()
def write_shard(
    model: VAE,
    sampling: SamplingSpec,
    spec: ShardSpec,
    sources: SourceImages | None,
    fs: AbstractFileSystem,
    root: str,
    judge: torch.nn.Module | None = None,
) -> ShardStats:
    """Generate shard `spec` and write it to `<root>/data/part-XXXXX-of-YYYYY.parquet`.

    Decodes in batches of `sampling.batch_size`, PNG-encodes, and writes a row group each time
    `sampling.row_group_rows` rows are ready, so memory holds at most one row group of PNGs.

    Args:
        model: the VAE in eval mode (CPU or GPU).
        sampling: the job's shared settings and schema.
        spec: the shard.
        sources: the real images (variants / interpolations), or None.
        fs: the output filesystem.
        root: the dataset directory in `fs`'s notation.
        judge: the real-trained classifier for a curated job (`sampling.curation_threshold` set).

    Returns:
        `ShardStats` (row count, size, sha256, label and method counts, curation counts).
    """
    t0, cpu0 = time.perf_counter(), time.process_time()
    curate = Curate(judge) if (judge is not None and sampling.curation_threshold is not None) else None
    rows = shard_rows(model, sampling, spec, sources, curate)
    rel = shard_path(spec.index, sampling.num_shards)
    fs.makedirs(join(root, DATA_DIR), exist_ok=True)
    with fs.open(join(root, rel), "wb") as f:
        sink = _HashingSink(f)
        groups = _write_row_groups(model, sampling, spec, rows, sink)
    counts = Counter(rows.labels.tolist()) if rows.labels is not None else Counter()
    return ShardStats(
        index=spec.index,
        path=rel,
        rows=rows.z.shape[0],
        bytes=sink.size,
        sha256=sink.sha.hexdigest(),
        row_groups=groups,
        label_counts={int(k): int(v) for k, v in sorted(counts.items())},
        method_counts=dict(Counter(rows.methods)),
        seconds=time.perf_counter() - t0,
        cpu_seconds=time.process_time() - cpu0,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        pid=os.getpid(),
        curation=curate.counts if curate is not None else None,
    )


def _write_row_groups(
    model: VAE, sampling: SamplingSpec, spec: ShardSpec, rows: ShardRows, sink: _HashingSink
) -> int:
    """Decode `rows` batch by batch into PNGs and write them to `sink` as Parquet row groups of
    `sampling.row_group_rows` rows (the last one shorter); returns the number of row groups."""
    n = rows.z.shape[0]
    c, h, w = model.cfg.image_shape
    encoder = PNGEncoder(c, h, w, sampling.png_compression, sampling.png_backend)
    pngs: list[bytes] = []
    flushed = 0  # rows already written
    groups = 0
    writer = pq.ParquetWriter(sink, sampling.schema, compression=COMPRESSION, write_statistics=["label"])
    for lo in range(0, n, sampling.batch_size):
        hi = min(n, lo + sampling.batch_size)
        pngs += encoder.encode_batch(_decoded_pixels(model, rows, lo, hi))
        while len(pngs) >= sampling.row_group_rows or (hi == n and pngs):
            take = min(len(pngs), sampling.row_group_rows)
            writer.write_table(_table(sampling, rows, pngs[:take], spec.start, flushed, flushed + take))
            del pngs[:take]
            flushed += take
            groups += 1
    writer.close()
    return groups


def _decoded_pixels(model: VAE, rows: ShardRows, lo: int, hi: int) -> np.ndarray:
    """Rows [lo, hi) decoded on the model's device: uint8 (b, C, H, W) on the CPU."""
    z = rows.z[lo:hi].to(model.device, model.fc_dtype)  # (b, D)
    y = rows.labels[lo:hi].to(model.device) if rows.labels is not None else None
    return to_uint8(model.decode(z, y), model.cfg).cpu().numpy()


__all__ = [
    "SamplingSpec",
    "ShardRows",
    "ShardStats",
    "shard_generator",
    "shard_rows",
    "write_shard",
]
