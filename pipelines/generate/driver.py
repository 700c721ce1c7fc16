"""The sampling stage's driver: validate, plan, fan shards out to Ray actors, commit.

The driver never holds rows: it keeps the plan (a few integers per shard), at most two shard specs
in flight per actor, and the small stats each shard returns; memory stays flat however many rows
are generated. A shard that fails is retried (on any actor; it rewrites the same bytes). Nothing is
committed unless every shard was written and checked.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import resource
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from typing import TYPE_CHECKING, Any

import fsspec
import torch
from tqdm.auto import tqdm

from pipelines.config import PipelineConfig
from pipelines.console import console
from pipelines.data.imageset import ImageSet
from pipelines.dataset_format import FORMAT, FORMAT_VERSION, LATEST, PICTURE, PREVIEW, DatasetSummary
from pipelines.errors import DataError, ModelError
from pipelines.generate.actors import ShardWriter
from pipelines.generate.card import dataset_card
from pipelines.generate.commit import OutputTarget, commit, resolve_output, verify_files, writing
from pipelines.generate.fanout import RayFanout, run_local, run_on_ray
from pipelines.generate.plan import (
    GenerationPlan,
    class_names_for,
    make_plan,
    needs_real_data,
    resolve_seed,
    source_images,
    validate_request,
)
from pipelines.generate.png import backend_version, default_backend
from pipelines.generate.preview import preview_png
from pipelines.generate.schema import arrow_schema, hf_features, row_group_rows
from pipelines.generate.shard import SamplingSpec, ShardStats
from pipelines.redaction import publishable_config
from pipelines.storage import first_line, join, redact_url
from pipelines.usefulness.dataset import Judging, prepare_judging
from vae.io import ModelFileError, load_model, read_model_config

if TYPE_CHECKING:
    from pipelines.usefulness.report import UsefulnessReport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerateResult(DatasetSummary):
    """What a generation job wrote: its `DatasetSummary`, and how the writing went.

    Args (beyond `DatasetSummary`'s; `rows_per_s` is rows / seconds here):
        seconds: wall time from the first shard to the commit (actor start-up excluded).
        num_actors: writers used (0: in-process).
        startup_seconds: connecting to Ray and starting the actors (model loading included).
        cpu_seconds: CPU time the writers spent on shards (all processes; a contention-free cost).
        peak_rss_mb: "driver", "writers_max" and "writers_total" peak resident memory.
        output_dir: the configured output (== `dataset_dir` unless a new version was written).
        version: "vN" for "new_version" (the output's `_LATEST` then names it), else None.
        seed: the integer seed the shards used.
        seed_source: where it came from ("fixed", "per_run from run time ...").
    """

    seconds: float
    num_actors: int = 0
    startup_seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    output_dir: str = ""
    version: str | None = None
    seed: int = 0
    seed_source: str = ""


def _package_version() -> str:
    try:
        return metadata.version("vaeaug")
    except metadata.PackageNotFoundError:
        return "unknown"


def _model_storage_options(model_dir: str, cfg: PipelineConfig) -> dict[str, Any]:
    """`generate.storage_options` when the model lives on the same kind of storage as the output."""
    same = fsspec.utils.get_protocol(model_dir) == fsspec.utils.get_protocol(cfg.dataset_dir)
    return dict(cfg.generate.storage_options) if same else {}


def _load_model(model_dir: str, storage_options: dict[str, Any]) -> tuple[torch.nn.Module, dict[str, Any]]:
    try:
        meta = read_model_config(model_dir, storage_options)
        model = load_model(model_dir, storage_options=storage_options)
    except ModelFileError as exc:
        raise ModelError(str(exc)) from None
    except OSError as exc:
        raise ModelError(f"cannot read the model at {redact_url(model_dir)!r}: {exc}") from None
    return model, meta


def _content_config(cfg: PipelineConfig) -> dict[str, Any]:
    """The settings that decide the bytes of the files (not where or how parallel they are written)."""
    g = cfg.generate
    keys = (
        "num_samples per_class variants_per_image variant_temperature variant_limit interpolations "
        "interpolation_steps temperature seed shard_size batch_size png_compression"
    ).split()
    if g.curation_threshold is not None:  # absent otherwise: uncurated jobs keep their earlier ids
        keys += ["curation_threshold", "curation_max_rounds"]
    return {k: getattr(g, k) for k in keys}


def _job_id(
    cfg: PipelineConfig,
    meta: dict[str, Any],
    fingerprint: str | None,
    judge_sha: str | None,
    png_backend: str,
) -> str:
    """12 hex digits of sha256 over everything that decides the content (the `sample_id` prefix)."""
    content: dict[str, Any] = {
        "model_sha256": meta["weights_sha256"],
        "generate": _content_config(cfg),
        "data_fingerprint": fingerprint,
    }
    if judge_sha is not None:  # curated rows depend on the judge
        content["judge_sha256"] = judge_sha
    content["png_backend"] = png_backend
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:12]


def _sampling_spec(
    cfg: PipelineConfig,
    model: Any,
    meta: dict[str, Any],
    plan: GenerationPlan,
    data: ImageSet | None,
    judge_sha: str | None = None,
) -> tuple[SamplingSpec, dict[str, Any]]:
    """(SamplingSpec, provenance) of the generation (the provenance goes in every file's metadata)."""
    fingerprint = data.fingerprint() if (data is not None and plan.needs_sources) else None
    png_backend = default_backend()
    job_id = _job_id(cfg, meta, fingerprint, judge_sha, png_backend)
    provenance = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "job_id": job_id,
        "model_sha256": meta["weights_sha256"],
        "model_config": model.cfg.to_dict(),
        "seed": cfg.generate.seed,
        "generate": _content_config(cfg),
        "data_fingerprint": fingerprint,
        "judge_sha256": judge_sha,
        "class_names": plan.class_names,
        "vaeaug_version": _package_version(),
        "torch_version": torch.__version__.split("+")[0],
        "png_deflate": backend_version(png_backend),
    }
    g = cfg.generate
    schema = arrow_schema(model.cfg.latent_dim, plan.class_names, provenance)
    sampling = SamplingSpec(
        job_id=job_id,
        seed=g.seed,
        num_shards=len(plan.shards),
        temperature=g.temperature,
        variant_temperature=g.variant_temperature,
        variants_per_image=g.variants_per_image,
        interpolation_steps=g.interpolation_steps,
        batch_size=g.batch_size,
        png_compression=g.png_compression,
        row_group_rows=row_group_rows(model.cfg.image_shape, model.cfg.latent_dim, g.shard_size),
        schema=schema,
        png_backend=png_backend,
        curation_threshold=g.curation_threshold if judge_sha is not None else None,
        curation_max_rounds=g.curation_max_rounds,
    )
    return sampling, provenance


def _progress(total: int, enabled: bool) -> tqdm:
    return tqdm(
        total=total,
        unit="img",
        unit_scale=total >= 10_000,
        desc="generate",
        disable=None if enabled else True,  # None: a bar on a terminal, nothing in logs and pipes
        smoothing=0.3,
    )


def _manifest(
    cfg: PipelineConfig,
    plan: GenerationPlan,
    sampling: SamplingSpec,
    provenance: dict[str, Any],
    stats: list[ShardStats],
    model: Any,
    model_dir: str,
    created_at: str,
    seed_source: str,
) -> dict[str, Any]:
    labels: Counter[int] = Counter()
    methods: Counter[str] = Counter()
    for s in stats:
        labels.update(s.label_counts)
        methods.update(s.method_counts)
    per_class = (
        {plan.class_names[k]: labels.get(k, 0) for k in range(plan.num_classes)} if plan.num_classes else {}
    )
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_at": created_at,
        "rows": sum(s.rows for s in stats),
        "num_shards": len(stats),
        "files": [
            {"path": s.path, "rows": s.rows, "bytes": s.bytes, "sha256": s.sha256, "row_groups": s.row_groups}
            for s in stats
        ],
        "per_class": per_class,
        "per_method": {m: methods[m] for m in sorted(methods)},
        "class_names": plan.class_names,
        "conditional": plan.num_classes is not None,
        "image_shape": list(model.cfg.image_shape),
        "image_format": "png",
        "latent_dim": model.cfg.latent_dim,
        "row_group_rows": sampling.row_group_rows,
        "features": hf_features(model.cfg.latent_dim, plan.class_names),
        "arrow_schema": sampling.schema.remove_metadata().to_string(),
        "provenance": {
            **provenance,
            "seed_source": seed_source,  # not in the Parquet metadata: a fixed seed keeps its bytes
            "created_at": created_at,
            "model_dir": redact_url(model_dir),
            "config": publishable_config(cfg.to_dict()),  # the redaction policy, for a published file
        },
    }


def _measure(
    cfg: PipelineConfig, judging: Judging, target: Any, stats: list[ShardStats], total: int
) -> tuple[UsefulnessReport | None, str | None]:
    """(the usefulness report on the written, uncommitted shards, why there is none).

    Writes the per-class picture next to them. A failure here is reported, not raised: the shards are
    complete and the report is a measurement of them, so it must not cost the dataset.
    """
    if judging.note is not None or judging.real is None or judging.judge is None or not cfg.report.enabled:
        return None, judging.note or "usefulness report off (report.enabled=false)"
    from pipelines.usefulness.dataset import report_for_files, usefulness_picture

    paths = [join(target.root, s.path) for s in stats]
    curated = judging.judge_sha is not None
    try:
        report, sample = report_for_files(
            cfg.report, judging.real, target.fs, paths, total, judging.judge, curated=curated
        )
        picture = usefulness_picture(report, sample, judging.judge, judging.real)
        target.fs.pipe_file(join(target.root, PICTURE), picture)
    except Exception as exc:  # noqa: BLE001 - any failure of the measurement becomes its note
        log.warning("usefulness report failed: %s", first_line(exc))
        return None, f"the usefulness report failed: {first_line(exc)}"
    return report, None


def _curation_summary(cfg: PipelineConfig, plan: GenerationPlan, stats: list[ShardStats]) -> dict[str, Any]:
    """Per class name: candidates tried, accepted, acceptance rate, rows kept below the threshold."""
    from pipelines.generate.curation import CurationCounts

    total = CurationCounts()
    for s in stats:
        if s.curation is not None:
            total.update(s.curation)
    if not total.tried:
        return {}
    per_class = {
        plan.class_names[k]: {
            "tried": total.tried[k],
            "accepted": total.accepted[k],
            "acceptance_rate": total.accepted[k] / total.tried[k],
            "fallback": total.fallback[k],
        }
        for k in sorted(total.tried)
    }
    g = cfg.generate
    return {"threshold": g.curation_threshold, "max_rounds": g.curation_max_rounds, "per_class": per_class}


def _real_data(cfg: PipelineConfig, model: Any, data: ImageSet | None, required: bool) -> ImageSet | None:
    """The real images in the model's range: given, or loaded when a mode, curation or the report
    needs them. Only the report does without: a loading problem then just skips it."""
    wanted = required or (cfg.report.enabled and model.cfg.conditional)
    if data is not None or not wanted:
        return data
    from pipelines.data.stream import load_data_for

    try:
        return load_data_for(cfg, model.cfg)
    except DataError:
        if required:
            raise
        return None


def _with_seed(cfg: PipelineConfig, seed: int) -> PipelineConfig:
    """A shallow copy of `cfg` whose `generate.seed` is the resolved integer."""
    out = copy.copy(cfg)
    out.generate = cfg.generate.model_copy(update={"seed": seed})
    return out


def _write_preview(
    target: OutputTarget, stats: list[ShardStats], plan: GenerationPlan
) -> str | dict[str, str]:
    """Draw the preview grid from the written shards; the manifest's `preview` entry.

    Returns:
        `PREVIEW` (its name in the dataset directory), or {"skipped": why} when it could not be
        drawn: a picture must not cost the dataset.
    """
    t0 = time.perf_counter()
    try:
        png = preview_png(target.fs, target.root, stats, plan.class_names, plan.num_classes is not None)
        target.fs.pipe_file(join(target.root, PREVIEW), png)
    except Exception as exc:  # noqa: BLE001 - any failure becomes the manifest's note
        log.warning("preview grid failed: %s", first_line(exc))
        return {"skipped": f"the preview grid failed: {first_line(exc)}"}
    log.debug("preview grid in %.2f s", time.perf_counter() - t0)
    return PREVIEW


@dataclass
class _Run:
    """What `_write_and_commit` needs from the checks and the plan."""

    cfg: PipelineConfig
    plan: GenerationPlan
    sampling: SamplingSpec
    judging: Judging
    model: Any
    model_dir: str
    model_opts: dict[str, Any]
    sources: Any
    info: Any  # ClusterInfo, or None: write in this process
    provenance: dict[str, Any]
    seed_source: str
    progress: bool


@dataclass
class _Written:
    """What `_write_and_commit` did: shard stats, actors used, start-up and write seconds, the
    committed manifest and its URL, and whether the usefulness picture was drawn."""

    stats: list[ShardStats]
    num_actors: int
    startup: float
    seconds: float
    manifest: dict[str, Any]
    manifest_path: str
    has_picture: bool


def _write_and_commit(run: _Run, target: OutputTarget) -> _Written:
    """Write every shard (on Ray or here), check them, measure, and commit under the lease."""
    cfg, plan, sampling = run.cfg, run.plan, run.sampling
    created_at = datetime.now(UTC).isoformat(timespec="seconds")
    t_start = time.perf_counter()
    with _progress(plan.total_rows, run.progress) as bar:
        if run.info is not None:
            fanout = RayFanout(
                cfg.generate, run.info, plan, sampling, target, run.model_dir, run.model_opts, run.sources
            )
            stats, n_actors, startup = run_on_ray(fanout, bar)
        else:
            writer = ShardWriter.in_process(
                run.model, sampling, run.sources, target.fs, target.root, run.judging.judge
            )
            stats, n_actors, startup = run_local(plan, writer, bar), 0, 0.0
    verify_files(target, stats)
    with console.stage("usefulness report") as stage:
        report, why_not = _measure(cfg, run.judging, target, stats, plan.total_rows)
        stage.note(
            f"{report.verdict}, gain {100 * report.gain:+.1f} points" if report else f"skipped: {why_not}"
        )
    manifest = _manifest(
        cfg, plan, sampling, run.provenance, stats, run.model, run.model_dir, created_at, run.seed_source
    )
    manifest["preview"] = _write_preview(target, stats, plan)
    manifest["curation"] = _curation_summary(cfg, plan, stats)
    manifest["usefulness"] = report.to_dict() if report is not None else {"skipped": why_not}
    manifest_path = commit(target, manifest, dataset_card(manifest))
    seconds = time.perf_counter() - t_start - startup
    return _Written(stats, n_actors, startup, seconds, manifest, manifest_path, report is not None)


def generate(
    cfg: PipelineConfig,
    model_dir: str | None = None,
    data: ImageSet | None = None,
    progress: bool = True,
    use_ray: bool = True,
    run_time: datetime | None = None,
) -> GenerateResult:
    """Sample the dataset `cfg.generate` describes, measure its usefulness, and commit it.

    Args:
        cfg: the pipeline config (`generate` settings, `data` for variants, interpolations, curation
            and the report, `report`, `ray`).
        model_dir: the saved model; None: `cfg.model_dir`.
        data: the real images (in the model's range); None: loaded from `cfg.data` when needed.
        progress: show a progress bar (rows done / total, rows/s).
        use_ray: fan out to Ray actors; False writes every shard in this process (same bytes).
        run_time: the run's time (a Prefect flow run's scheduled start); `generate.seed=per_run`
            derives the seed from it (the same time gives the same bytes). None: now, in UTC.

    Returns:
        `GenerateResult` describing the committed dataset (with its usefulness report).

    Raises:
        PipelineError: nothing to generate or an unknown class; `ModelError`: missing/corrupt model or
            a mode it cannot do; `DataError`: unusable real data; `StorageError`: an existing
            dataset, an unwritable output or a failed shard. Nothing is committed in any of these cases.
    """
    model_dir = model_dir or cfg.model_dir
    seed, seed_source = resolve_seed(cfg.generate.seed, run_time)
    cfg = _with_seed(cfg, seed)  # everything below (plan, shards, job id, manifest) sees the int
    run = _prepare(cfg, model_dir, data, seed_source, progress)
    if use_ray:  # connect before touching the output: a failed connection must not cost the old dataset
        from pipelines.raycluster import ensure_ray

        run.info = ensure_ray(cfg.ray)
    g = cfg.generate
    with writing(cfg.dataset_dir, g.if_exists, g.storage_options) as target:  # the writer's lease
        written = _write_and_commit(run, target)
    log.info(
        "committed %d rows to %s in %.1f s", written.manifest["rows"], redact_url(target.url), written.seconds
    )
    if target.version is not None:
        log.info(
            "version %s of %s (readers of it follow %s)", target.version, redact_url(target.base_url), LATEST
        )
    return _result(target, written)


def _prepare(
    cfg: PipelineConfig, model_dir: str, data: ImageSet | None, seed_source: str, progress: bool
) -> _Run:
    """Every check and every preparation before the output is touched: the model, the request, the
    output (checked again under the lease), the real data, the plan, the judge, the sampling spec.
    The returned run writes in this process until `info` is set."""
    g = cfg.generate
    model_opts = _model_storage_options(model_dir, cfg)
    model, meta = _load_model(model_dir, model_opts)
    class_names = class_names_for(model.cfg, meta.get("extra", {}).get("class_names"))
    validate_request(g, model.cfg, class_names)
    resolve_output(cfg.dataset_dir, g.if_exists, g.storage_options)  # fail before any work
    curate = g.curation_threshold is not None
    data = _real_data(cfg, model, data, needs_real_data(g) or curate)
    plan = make_plan(g, model.cfg, class_names, data)
    judging = prepare_judging(cfg, model, model_dir, model_opts, meta, data, curate)
    sampling, provenance = _sampling_spec(cfg, model, meta, plan, data, judging.judge_sha)
    sources = source_images(plan, data) if (plan.needs_sources and data is not None) else None
    return _Run(cfg, plan, sampling, judging, model, model_dir, model_opts, sources, None, provenance,
                seed_source, progress)  # fmt: skip


def _result(target: OutputTarget, written: _Written) -> GenerateResult:
    """The `GenerateResult` of a committed dataset."""
    stats, manifest, seconds, n_actors = written.stats, written.manifest, written.seconds, written.num_actors
    peaks: dict[int, float] = {}
    for s in stats:
        peaks[s.pid] = max(peaks.get(s.pid, 0.0), s.peak_rss_mb)
    driver_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    usefulness = manifest["usefulness"]
    return GenerateResult(
        dataset_dir=target.url,
        rows=manifest["rows"],
        files=[join(target.url, s.path) for s in stats],
        per_class=manifest["per_class"],
        per_method=manifest["per_method"],
        manifest_path=written.manifest_path,
        seconds=seconds,
        rows_per_s=manifest["rows"] / seconds if seconds > 0 else 0.0,
        num_actors=n_actors,
        startup_seconds=written.startup,
        cpu_seconds=sum(s.cpu_seconds for s in stats),
        peak_rss_mb={
            "driver": driver_peak,
            "writers_max": max(peaks.values(), default=0.0),
            "writers_total": sum(peaks.values()) if n_actors else 0.0,
        },
        usefulness=None if "skipped" in usefulness else usefulness,
        usefulness_note=usefulness.get("skipped"),
        curation=manifest["curation"],
        picture_path=join(target.url, PICTURE) if written.has_picture else None,
        preview_path=join(target.url, PREVIEW) if manifest["preview"] == PREVIEW else None,
        output_dir=target.base_url,
        version=target.version,
        seed=manifest["provenance"]["seed"],
        seed_source=manifest["provenance"]["seed_source"],
    )


__all__ = ["GenerateResult", "generate"]
