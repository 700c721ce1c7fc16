"""The generation job as a deterministic list of small shard specs.

Rows are numbered 0..N-1 over consecutive segments, in this order: prior samples, per-class samples
(by class index), variants of real images, interpolations between pairs of real images. The rows are
cut into shards of at most `shard_size` rows; a shard may span segments and then holds one `Piece`
per segment. Specs hold only integers: what a row is follows from its segment and its offset in it
(variant row r is variant r % k of source image r // k; interpolation row r is step r % steps of
pair r // steps), so the plan stays tiny however many rows are asked for.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from pipelines.config import MAX_ROWS, MAX_SHARDS, GenerateConfig
from pipelines.data.imageset import ImageSet
from pipelines.errors import DataError, ModelError, PipelineError
from vae.config import ConfigError, VAEConfig

#: `generate.seed` value that derives the seed from each run's time (`resolve_seed`).
PER_RUN = "per_run"
#: Values of the `method` column, in segment order.
METHODS: tuple[str, ...] = ("prior", "class", "variant", "interpolation")
#: `spawn_key` that separates the plan's own randomness (pair choice) from the shards' (seed, i).
_PAIRS_KEY = 1
#: Most latent values one shard holds at once (rows x latent_dim; 1 GiB of float32).
MAX_SHARD_LATENTS = 2**28
#: Most values of one decoded batch (batch_size x C x H x W; 4 GiB of float32).
MAX_BATCH_VALUES = 2**30
_NOTHING = (
    "nothing to generate: set generate.num_samples > 0, or give generate.per_class counts, "
    "generate.variants_per_image or generate.interpolations"
)


@dataclass(frozen=True)
class Piece:
    """Consecutive rows of one segment inside a shard.

    Args:
        method: one of `METHODS`.
        offset: position of the first row within its segment.
        count: number of rows.
        label: the class index of a "class" segment, else None.
    """

    method: str
    offset: int
    count: int
    label: int | None = None


@dataclass(frozen=True)
class ShardSpec:
    """One output file's worth of work.

    Args:
        index: shard number (0-based); its randomness derives from (seed, index) only.
        start: global row number of the shard's first row.
        pieces: the segments' rows, in row order.
    """

    index: int
    start: int
    pieces: tuple[Piece, ...]

    @property
    def rows(self) -> int:
        """Number of rows in the shard."""
        return sum(p.count for p in self.pieces)


@dataclass
class Segment:
    """A run of rows made one way (`label` set for a "class" segment)."""

    method: str
    rows: int
    label: int | None = None


@dataclass
class SourceImages:
    """The real images the variant and interpolation rows refer to (shipped to each actor once).

    Args:
        images: float32 (M, C, H, W) in the model's range.
        labels: int64 (M,) class indices.
        ids: M stable ids (the `source_id` column).
        pairs: int64 (P, 2) positions into `images` of each interpolation's two ends.
        num_variant_sources: variants use images[:num_variant_sources].
    """

    images: object  # torch.Tensor; typed loosely so this module imports without torch
    labels: object
    ids: list[str]
    pairs: np.ndarray
    num_variant_sources: int


@dataclass
class GenerationPlan:
    """The rows to generate, cut into shards: everything needed to produce and describe the dataset."""

    segments: list[Segment]
    shards: list[ShardSpec]
    total_rows: int
    class_names: list[str]
    num_classes: int | None
    variants_per_image: int
    interpolation_steps: int
    source_indices: list[int] = field(default_factory=list)  # rows of the real ImageSet that are used
    pairs: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))

    @property
    def needs_sources(self) -> bool:
        """Whether shards read real images (variants or interpolations)."""
        return bool(self.source_indices)

    def expected_per_class(self) -> dict[int, int] | None:
        """Rows per class index that the prior and per-class segments will hold (None: unconditional)."""
        if self.num_classes is None:
            return None
        counts = dict.fromkeys(range(self.num_classes), 0)
        for seg in self.segments:
            if seg.method == "prior":
                for k in range(self.num_classes):  # labels cycle 0, 1, ..., K-1, 0, ...
                    counts[k] += seg.rows // self.num_classes + (k < seg.rows % self.num_classes)
            elif seg.method == "class" and seg.label is not None:
                counts[seg.label] += seg.rows
        return counts


def needs_real_data(gen: GenerateConfig) -> bool:
    """Whether the job uses real images (variants or interpolations)."""
    return gen.variants_per_image > 0 or gen.interpolations > 0


def class_names_for(model_cfg: VAEConfig, recorded: list[str] | None) -> list[str]:
    """The model's class names: the recorded ones, else "0".."K-1" (empty for an unconditional model)."""
    if recorded:
        return [str(c) for c in recorded]
    return [str(k) for k in range(model_cfg.num_classes or 0)]


def _class_segments(gen: GenerateConfig, model_cfg: VAEConfig, class_names: list[str]) -> list[Segment]:
    wanted = {name: n for name, n in gen.per_class.items() if n > 0}
    if gen.per_class and not model_cfg.conditional:
        raise ModelError(
            f"generate.per_class={dict(gen.per_class)} needs a class-conditional model, but this model is "
            "unconditional: train with conditional=true, or use generate.num_samples instead"
        )
    unknown = sorted(set(gen.per_class) - set(class_names))
    if unknown:
        raise PipelineError(
            f"generate.per_class names unknown class(es) {unknown}: the model's classes are {class_names}"
        )
    index = {name: k for k, name in enumerate(class_names)}
    return [Segment("class", wanted[name], label=index[name]) for name in class_names if name in wanted]


def _check_data(data: ImageSet | None, model_cfg: VAEConfig) -> ImageSet:
    """`data`, checked against the model (variants and interpolations start from its images)."""
    if data is None:
        raise DataError(
            "generate.variants_per_image / generate.interpolations need real images: "
            "configure data: (source, path) or pass them in"
        )
    if len(data) == 0:
        raise DataError("the real data has no images: variants and interpolations need at least one")
    if tuple(data.image_shape) != tuple(model_cfg.image_shape):
        raise DataError(
            f"real images are {tuple(data.image_shape)} but the model makes {model_cfg.image_shape}: "
            "load them with the model's config (pipelines.data.load_images(cfg.data, model.cfg))"
        )
    if model_cfg.conditional and len(data):
        lo, hi = int(data.labels.min()), int(data.labels.max())
        if lo < 0 or hi >= (model_cfg.num_classes or 0):
            raise DataError(
                f"real image labels span [{lo}, {hi}] but the model has {model_cfg.num_classes} classes: "
                "use the data the model was trained on"
            )
    return data


def _choose_pairs(data: ImageSet, count: int, seed: int, conditional: bool) -> np.ndarray:
    """`count` pairs of distinct images (of the same class for a conditional model), seeded by `seed`."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_PAIRS_KEY,)))
    n = len(data)
    if not conditional:
        if n < 2:
            raise DataError(f"interpolations need at least 2 real images, got {n}")
        a = rng.integers(0, n, size=count)
        b = (a + rng.integers(1, n, size=count)) % n  # any other image
        return np.stack([a, b], axis=1).astype(np.int64)
    labels = np.asarray(data.labels.cpu().numpy() if hasattr(data.labels, "cpu") else data.labels)
    members = {int(k): np.flatnonzero(labels == k) for k in np.unique(labels)}
    eligible = np.concatenate([m for m in members.values() if len(m) >= 2] or [np.zeros(0, np.int64)])
    if len(eligible) == 0:
        raise DataError(
            "interpolations with a conditional model pair images of the same class, but no class has "
            "2 or more real images: load more data (data.limit)"
        )
    eligible.sort()
    a = eligible[rng.integers(0, len(eligible), size=count)]
    b = np.empty_like(a)
    for k, m in members.items():  # vectorised per class: another member of a's class
        sel = labels[a] == k
        if not sel.any():
            continue
        pos = np.searchsorted(m, a[sel])
        b[sel] = m[(pos + rng.integers(1, len(m), size=int(sel.sum()))) % len(m)]
    return np.stack([a, b], axis=1).astype(np.int64)


def _cut(segments: list[Segment], shard_size: int) -> list[ShardSpec]:
    shards: list[ShardSpec] = []
    pieces: list[Piece] = []
    start = row = 0
    for seg in segments:
        done = 0
        while done < seg.rows:
            room = shard_size - (row - start)
            take = min(room, seg.rows - done)
            pieces.append(Piece(seg.method, done, take, seg.label))
            done += take
            row += take
            if row - start == shard_size:
                shards.append(ShardSpec(len(shards), start, tuple(pieces)))
                pieces, start = [], row
    if pieces:
        shards.append(ShardSpec(len(shards), start, tuple(pieces)))
    return shards


def validate_request(gen: GenerateConfig, model_cfg: VAEConfig, class_names: list[str] | None = None) -> None:
    """The checks that need no real data (run before anything slow or destructive).

    Args:
        gen: what to generate.
        model_cfg: the model's config.
        class_names: the model's recorded class names.

    Raises:
        PipelineError: nothing to generate, or an unknown class name.
        ModelError: per-class counts asked of an unconditional model.
        ConfigError: a job too large for the limits (see `check_size`).
    """
    _class_segments(gen, model_cfg, class_names_for(model_cfg, class_names))
    if gen.curation_threshold is not None and not model_cfg.conditional:
        raise ModelError(
            f"generate.curation_threshold={gen.curation_threshold} keeps images whose requested label a "
            "classifier confirms, but this model is unconditional: train with conditional=true, or set "
            "generate.curation_threshold=null"
        )
    asked = gen.num_samples + sum(gen.per_class.values()) + gen.variants_per_image + gen.interpolations
    if asked <= 0:
        raise PipelineError(_NOTHING)
    known = gen.num_samples + sum(gen.per_class.values()) + gen.interpolations * gen.interpolation_steps
    check_size(known, gen, model_cfg)


def check_size(rows: int, gen: GenerateConfig, model_cfg: VAEConfig) -> None:
    """Refuse a job whose size would exhaust memory or storage before anything is allocated.

    Args:
        rows: the job's rows (or those known so far).
        gen: the settings (`shard_size`, `batch_size`).
        model_cfg: the model (latent size and image shape).

    Raises:
        ConfigError: more than `MAX_ROWS` rows or `MAX_SHARDS` shards, a shard's latents above
            `MAX_SHARD_LATENTS`, or a decoder batch above `MAX_BATCH_VALUES` (each names the fix).
    """
    if rows > MAX_ROWS:
        raise ConfigError(
            f"the job asks for {rows:_} rows, more than the {MAX_ROWS:_} one job may write: lower "
            "generate.num_samples / per_class / variants_per_image / interpolations, or split the work "
            "into several jobs"
        )
    shards = -(-rows // gen.shard_size)
    if shards > MAX_SHARDS:
        need = -(-rows // MAX_SHARDS)
        raise ConfigError(
            f"generate.shard_size={gen.shard_size} cuts {rows:_} rows into {shards:_} files, more than "
            f"{MAX_SHARDS:_}: raise generate.shard_size to at least {need}"
        )
    latents = min(gen.shard_size, rows) * model_cfg.latent_dim
    if latents > MAX_SHARD_LATENTS:
        fit = max(1, MAX_SHARD_LATENTS // model_cfg.latent_dim)
        raise ConfigError(
            f"generate.shard_size={gen.shard_size} holds {latents:_} latent values per shard with this "
            f"model's latent_dim={model_cfg.latent_dim}: lower generate.shard_size to {fit} or less"
        )
    values = gen.batch_size * int(np.prod(model_cfg.image_shape))
    if values > MAX_BATCH_VALUES:
        fit = max(1, MAX_BATCH_VALUES // int(np.prod(model_cfg.image_shape)))
        raise ConfigError(
            f"generate.batch_size={gen.batch_size} decodes {values:_} values at once for "
            f"{'x'.join(map(str, model_cfg.image_shape))} images: lower generate.batch_size to {fit} or less"
        )


def make_plan(
    gen: GenerateConfig,
    model_cfg: VAEConfig,
    class_names: list[str] | None = None,
    data: ImageSet | None = None,
) -> GenerationPlan:
    """Validate the request against the model and data, and cut it into shards.

    Args:
        gen: what to generate (counts per mode, shard size, seed).
        model_cfg: the model's config (conditional or not, image shape).
        class_names: the model's class names (recorded at training); None: "0".."K-1".
        data: the real images, in the model's range; required for variants and interpolations.

    Returns:
        The `GenerationPlan`; the same inputs always give the same plan.

    Raises:
        PipelineError: nothing to generate, or an unknown class name (the message lists the valid ones).
        ModelError: per-class counts asked of an unconditional model.
        DataError: variants or interpolations without usable real data.
        ConfigError: a job too large for the limits (see `check_size`).
    """
    names = class_names_for(model_cfg, class_names)
    segments = [Segment("prior", gen.num_samples)] if gen.num_samples > 0 else []
    segments += _class_segments(gen, model_cfg, names)
    sources: list[int] = []
    pairs = np.zeros((0, 2), dtype=np.int64)
    if needs_real_data(gen):
        sources, pairs = _real_segments(gen, model_cfg, _check_data(data, model_cfg), segments)
    total = sum(s.rows for s in segments)
    if total <= 0:
        raise PipelineError(_NOTHING)
    check_size(total, gen, model_cfg)
    return GenerationPlan(
        segments=segments,
        shards=_cut(segments, gen.shard_size),
        total_rows=total,
        class_names=names,
        num_classes=model_cfg.num_classes,
        variants_per_image=gen.variants_per_image,
        interpolation_steps=gen.interpolation_steps,
        source_indices=sources,
        pairs=pairs,
    )


def _real_segments(
    gen: GenerateConfig, model_cfg: VAEConfig, data: ImageSet, segments: list[Segment]
) -> tuple[list[int], np.ndarray]:
    """Append the variant and interpolation segments to `segments`.

    Returns:
        (the rows of `data` the shards read: the variant sources 0..n_var-1 first, then the other
        pair ends, sorted; the interpolation pairs int64 (P, 2) as positions in those rows).
    """
    n_var = 0
    if gen.variants_per_image > 0:
        n_var = len(data) if gen.variant_limit is None else min(gen.variant_limit, len(data))
        segments.append(Segment("variant", n_var * gen.variants_per_image))
    interpolated = gen.interpolations * gen.interpolation_steps
    # Before the pairs (interpolations x 2 integers) and the shards are allocated.
    check_size(sum(s.rows for s in segments) + interpolated, gen, model_cfg)
    pairs = np.zeros((0, 2), dtype=np.int64)
    if gen.interpolations > 0:
        pairs = _choose_pairs(data, gen.interpolations, gen.seed, model_cfg.conditional)
        segments.append(Segment("interpolation", interpolated))
    extra = np.setdiff1d(np.unique(pairs), np.arange(n_var)) if len(pairs) else np.zeros(0, np.int64)
    sources = list(range(n_var)) + [int(i) for i in extra]
    if len(pairs):
        pairs = np.searchsorted(np.asarray(sources), pairs).astype(np.int64)  # -> positions in sources
    return sources, pairs


def source_images(plan: GenerationPlan, data: ImageSet) -> SourceImages:
    """The subset of `data` the shards read, with pairs re-indexed into it."""
    sub = data.subset(plan.source_indices)
    n_var = next((s.rows for s in plan.segments if s.method == "variant"), 0)
    n_var = n_var // plan.variants_per_image if plan.variants_per_image else 0
    return SourceImages(
        images=sub.images.contiguous(),  # (M, C, H, W)
        labels=sub.labels,
        ids=sub.ids,
        pairs=plan.pairs,
        num_variant_sources=n_var,
    )


def resolve_seed(setting: int | str, run_time: datetime | None = None) -> tuple[int, str]:
    """The job's integer seed and where it comes from.

    Args:
        setting: `generate.seed`: an int (used as is) or "per_run".
        run_time: the run's time (the scheduled start of a Prefect flow run); None: now. A naive
            datetime is taken as UTC.

    Returns:
        (seed, source): for "per_run" the seed is the first 53 bits of sha256 of the run time in UTC
        (ISO 8601), so the same run time always gives the same seed (a retried run rewrites the same
        bytes) and every other time another one; source reads "fixed" or
        "per_run from run time 2026-11-22T03:00:00+00:00".

    Raises:
        ConfigError: `setting` is neither an int >= 0 nor "per_run".
    """
    if setting != PER_RUN:
        if not isinstance(setting, int) or isinstance(setting, bool) or setting < 0:
            raise ConfigError(f"generate.seed={setting!r}: must be an int >= 0, or {PER_RUN}")
        return setting, "fixed"
    given = run_time is not None
    when = run_time if run_time is not None else datetime.now(UTC)
    when = (when.replace(tzinfo=UTC) if when.tzinfo is None else when).astimezone(UTC)
    stamp = datetime(*when.timetuple()[:6], when.microsecond, tzinfo=UTC).isoformat()  # plain datetime
    digest = hashlib.sha256(f"vaeaug-seed:{stamp}".encode()).digest()
    seed = int.from_bytes(digest[:8], "big") >> 11  # 53 bits: exact in any JSON reader
    return seed, f"{PER_RUN} from {'run' if given else 'start'} time {stamp}"


__all__ = [
    "METHODS",
    "PER_RUN",
    "GenerationPlan",
    "Piece",
    "Segment",
    "ShardSpec",
    "SourceImages",
    "class_names_for",
    "make_plan",
    "needs_real_data",
    "resolve_seed",
    "source_images",
    "validate_request",
]
