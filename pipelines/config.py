"""Typed pipeline configuration: defaults -> YAML file -> dotted command-line overrides.

One dataclass per stage (`DataConfig`, `VAEConfig`, `TrainConfig`, `GenerateConfig`, `RayConfig`),
gathered in `PipelineConfig`. Unknown keys and wrong types are errors that name the key; the merged
config is saved next to the outputs (`save_config`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from pipelines.data.config import URL_SOURCES, DataConfig
from pipelines.redaction import redact_config
from vae.config import ConfigError, VAEConfig


@dataclass
class RayConfig:
    """How to reach Ray.

    Args:
        address: an existing cluster ("ray://host:10001", "host:6379" or "auto"); None uses
            `RAY_ADDRESS` if set, else starts a local Ray sized to this machine.
        num_cpus: CPUs of a local Ray (None: all of this machine's).
        submit_job: run the stage as a Ray Job on the cluster's dashboard address (KubeRay) and follow it.
    """

    address: str | None = None
    num_cpus: int | None = None
    submit_job: bool = False

    def __post_init__(self) -> None:
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ConfigError(f"ray.num_cpus={self.num_cpus}: must be >= 1 or null (all CPUs)")


@dataclass
class FlowConfig:
    """Prefect orchestration settings.

    Args:
        result_storage: where the training cache lives (local dir or fsspec URL such as
            s3://bucket/vaeaug-cache): JSON records under `train/`, validated on load, never pickles;
            Prefect persists no results. None: `<output_dir>/.cache`.
        cache_training: reuse a trained model when the data fingerprint, the training config and the
            training code match an earlier run (set false to always retrain; the record is refreshed).
        retries: retries of the stages that can fail transiently (data loading, training, sampling).
        retry_delay_seconds: first retry delay; each further retry waits twice as long.
    """

    result_storage: str | None = None
    cache_training: bool = True
    retries: int = 2
    retry_delay_seconds: float = 10.0

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ConfigError(f"flow.retries={self.retries}: must be >= 0")
        if self.retry_delay_seconds < 0:
            raise ConfigError(f"flow.retry_delay_seconds={self.retry_delay_seconds}: must be >= 0")


#: Largest `train.lr`: Adam moves every weight by up to lr per step, so far larger values overflow
#: float32 weights at once (beyond ~3e38 torch refuses the step with a traceback).
MAX_LR = 10.0


@dataclass
class TrainConfig:
    """Distributed training settings (Ray Train).

    Args:
        epochs: reporting and checkpointing rounds; each is one pass over the training split, or
            several when `min_steps` asks for more optimizer steps than `epochs` passes give.
        min_steps: the floor of optimizer steps: a small set gets as many passes per epoch as it
            takes to reach it (a VAE on 1,000 images needs thousands of steps, not 30 epochs' 240).
        batch_size: global batch size (split evenly across workers).
        lr: Adam learning rate, in (0, `MAX_LR`].
        weight_decay: AdamW decay (0 = Adam).
        val_fraction: share of the data held out for validation.
        seed: seeds the split, the initial weights and the shuffling.
        num_workers: Ray Train workers (processes); >= 1.
        use_gpu: True/False, or None to use GPUs when the cluster has them.
        mixed_precision: bf16 autocast on GPU.
        checkpoint_every: checkpoint every N epochs (the last epoch always is).
        keep_checkpoints: how many checkpoints to keep.
        max_failures: worker failures tolerated before the run fails (-1: unlimited).
        storage_path: where runs and checkpoints live (local path, s3://, gs://).
        run_name: stable run name; re-running the same name resumes. None: derived from the config.
        streaming: how Ray Train gets a "folder" or "parquet" source (other sources, and
            `backend="local"`, always load into memory). "auto" streams it from storage (the driver
            lists the files, Ray Data reads and decodes each worker's shard) when it is larger than
            `stream_above_mb`, on storage or decoded; "always"/"never" force it.
            See `pipelines.data.stream`.
        stream_above_mb: size threshold for "auto", in MB (the larger of the files' total size and
            N x C x H x W x 4 bytes decoded, both known from the listing).
        cpus_per_worker: CPUs (and torch threads) per Ray Train worker; None: as many as the cluster
            can give every worker evenly.
        backend: "ray" (Ray Train, any number of workers) or "local" (this process, no Ray).
    """

    epochs: int = 30
    min_steps: int = 3000
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.0
    val_fraction: float = 0.1
    seed: int = 0
    num_workers: int = 1
    use_gpu: bool | None = None
    mixed_precision: bool = False
    checkpoint_every: int = 1
    keep_checkpoints: int = 2
    max_failures: int = 0
    storage_path: str = "./runs"
    run_name: str | None = None
    streaming: Literal["auto", "always", "never"] = "auto"
    stream_above_mb: float = 512.0
    cpus_per_worker: int | None = None
    backend: Literal["ray", "local"] = "ray"

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs", "must be >= 1"),
            (self.min_steps >= 0, "min_steps", "must be >= 0 (0: exactly `epochs` passes)"),
            (self.batch_size >= 1, "batch_size", "must be >= 1"),
            # Adam moves each weight by up to lr per step: beyond MAX_LR float32 weights overflow.
            (0 < self.lr <= MAX_LR, "lr", f"must be in (0, {MAX_LR:g}] (Adam's step size; 1e-3 is typical)"),
            (self.weight_decay >= 0, "weight_decay", "must be >= 0"),
            (0 <= self.val_fraction < 1, "val_fraction", "must be in [0, 1)"),
            (self.num_workers >= 1, "num_workers", "must be >= 1 (one Ray Train worker per process)"),
            (self.checkpoint_every >= 1, "checkpoint_every", "must be >= 1"),
            (self.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1"),
            (self.max_failures >= -1, "max_failures", "must be >= 0, or -1 for unlimited"),
            (self.cpus_per_worker is None or self.cpus_per_worker >= 1, "cpus_per_worker", "must be >= 1"),
            (bool(self.storage_path), "storage_path", "give a local path or s3:// / gs:// URL"),
        ]
        for ok, key, fix in checks:
            if not ok:
                raise ConfigError(f"train.{key}={getattr(self, key)!r}: {fix}")
        if self.batch_size < self.num_workers:
            raise ConfigError(
                f"train.batch_size={self.batch_size} is smaller than train.num_workers="
                f"{self.num_workers}: each worker needs at least one sample per batch"
            )

    def steps_per_pass(self, train_images: int) -> int:
        """Optimizer steps of one pass over `train_images` (each rank's equal shard, per-worker batch)."""
        per_worker = max(1, self.batch_size // self.num_workers)
        return max(1, -(-(train_images // self.num_workers) // per_worker))

    def passes_per_epoch(self, train_images: int) -> int:
        """Passes over `train_images` per epoch so that epochs x passes x batches >= `min_steps`."""
        return max(1, -(-self.min_steps // (self.epochs * self.steps_per_pass(train_images))))

    def total_steps(self, train_images: int) -> int:
        """Optimizer steps of the whole run on `train_images` images."""
        return self.epochs * self.passes_per_epoch(train_images) * self.steps_per_pass(train_images)

    def budget_line(self, train_images: int) -> str:
        """One console line: epochs, passes and optimizer steps of a run on `train_images` images."""
        return (
            f"training budget: {self.epochs} epochs x {self.passes_per_epoch(train_images)} pass(es) over "
            f"{train_images} images = {self.total_steps(train_images)} optimizer steps "
            f"(train.min_steps={self.min_steps}, batch {self.batch_size})"
        )


#: Most rows one generation job may ask for (every mode together): far beyond any augmentation set,
#: and small enough that the plan (a few integers per shard) and the counts stay cheap.
MAX_ROWS = 10**9
#: Most rows per output file (`generate.shard_size`); a shard's latents are held in memory at once.
MAX_SHARD_ROWS = 10**6
#: Most output files per job: the plan holds one small spec per shard, the manifest one entry each.
MAX_SHARDS = 100_000
#: Largest decoder batch (`generate.batch_size`); the actors also decode one full batch at start-up.
MAX_DECODE_BATCH = 65_536


@dataclass
class GenerateConfig:
    """What to sample and where to write it (modes may be mixed in one job).

    Args:
        num_samples: images drawn from the prior (a conditional model cycles through the classes).
        per_class: class name -> number of images of that class (conditional models only).
        variants_per_image: k variants of each real image, drawn around its posterior.
        variant_temperature: scale of the posterior noise for variants (0: the posterior mean).
        variant_limit: use only the first N real images for variants (None: all).
        interpolations: number of pairs of real images to interpolate between.
        interpolation_steps: images per interpolation (both ends included), >= 2.
        temperature: prior scale for `num_samples` and `per_class`.
        seed: the job's seed (an int >= 0); shard i's randomness derives from (seed, i) only. "per_run"
            derives a new seed for every run from the run's time (the scheduled time under Prefect,
            else the start time): a retry of the same scheduled run writes the same bytes, the next
            night's run different ones. The manifest's provenance records the seed and its source.
        shard_size: at most this many rows per output file.
        batch_size: decoder batch size (256 suits CPUs; raise it on GPUs).
        num_actors: Ray actors decoding in parallel (None: one per GPU, or one per `cpus_per_actor`
            CPUs without GPUs).
        cpus_per_actor: CPUs each actor reserves and torch threads it uses (the output does not
            depend on it for a given thread count: keep it fixed across runs for byte-identical files).
        output: dataset directory (local path or fsspec URL); None: `<output_dir>/synthetic`.
        if_exists: "error" (default) writes one dataset at `output` itself and refuses a committed
            one there. "new_version" keeps every run: `output` becomes a directory of complete
            datasets `v1/`, `v2/`, ... (v1 on the first run) and a `_LATEST` pointer file, moved to
            each new version after it is committed; readers opening `output` follow the pointer,
            `output/v2` opens a version. "overwrite" writes the next version the same way and, once
            `_LATEST` names it, deletes what it replaced (older versions, or an unversioned dataset's
            files): a job killed midway leaves the old dataset whole. "new_version" refuses a
            directory holding one unversioned dataset (move its files into `v1/` first, or
            overwrite it). One job writes to an output at a time (see RELIABILITY.md).
        png_compression: zlib level of the PNGs (0-9); 1 is fast and small enough for small images.
        storage_options: fsspec options for `output`.
        curation_threshold: keep a "prior"/"class" image only when a classifier trained on the real
            training split gives its requested label at least this probability (rejected draws are
            redrawn, so the counts are still met exactly); null turns curation off.
        curation_max_rounds: redraws per row before it keeps its most confident candidate (counted
            as a fallback in the manifest).
    """

    num_samples: int = 10_000
    per_class: dict[str, int] = field(default_factory=dict)
    variants_per_image: int = 0
    variant_temperature: float = 1.0
    variant_limit: int | None = None
    interpolations: int = 0
    interpolation_steps: int = 8
    temperature: float = 1.0
    seed: int | str = 0  # an int >= 0 or "per_run" (__post_init__ names the fix; a Literal would not)
    shard_size: int = 10_000
    batch_size: int = 256
    num_actors: int | None = None
    cpus_per_actor: int = 1
    output: str | None = None
    if_exists: Literal["error", "overwrite", "new_version"] = "error"
    png_compression: int = 1
    storage_options: dict[str, Any] = field(default_factory=dict)
    curation_threshold: float | None = None
    curation_max_rounds: int = 50

    def __post_init__(self) -> None:
        nonneg = ("num_samples", "variants_per_image", "interpolations")
        for key in nonneg:
            if not 0 <= getattr(self, key) <= MAX_ROWS:
                raise ConfigError(f"generate.{key}={getattr(self, key)}: must be in 0..{MAX_ROWS:_}")
        for name, count in self.per_class.items():
            if not 0 <= count <= MAX_ROWS:
                raise ConfigError(f"generate.per_class.{name}={count}: counts must be in 0..{MAX_ROWS:_}")
        checks = [
            (self.variant_temperature >= 0, "variant_temperature", "must be >= 0"),
            (self.temperature >= 0, "temperature", "must be >= 0"),
            (self.interpolation_steps >= 2, "interpolation_steps", "must be >= 2"),
            (1 <= self.shard_size <= MAX_SHARD_ROWS, "shard_size", f"must be in 1..{MAX_SHARD_ROWS:_}"),
            (1 <= self.batch_size <= MAX_DECODE_BATCH, "batch_size", f"must be in 1..{MAX_DECODE_BATCH:_}"),
            (self.num_actors is None or self.num_actors >= 1, "num_actors", "must be >= 1 or null"),
            (self.cpus_per_actor >= 1, "cpus_per_actor", "must be >= 1"),
            (self.variant_limit is None or self.variant_limit >= 1, "variant_limit", "must be >= 1"),
            (0 <= self.png_compression <= 9, "png_compression", "must be in 0..9"),
            (
                self.curation_threshold is None or 0 < self.curation_threshold < 1,
                "curation_threshold",
                "must be in (0, 1), or null for no curation",
            ),
            (self.curation_max_rounds >= 1, "curation_max_rounds", "must be >= 1"),
            (
                self.seed == "per_run" or (isinstance(self.seed, int) and self.seed >= 0),
                "seed",
                "must be an int >= 0, or per_run for a seed derived from each run's time",
            ),
        ]
        for ok, key, fix in checks:
            if not ok:
                raise ConfigError(f"generate.{key}={getattr(self, key)!r}: {fix}")
        self._check_known_rows()

    def _check_known_rows(self) -> None:
        """The rows known without the data (prior, per-class, interpolations) within `MAX_ROWS`."""
        interpolated = self.interpolations * self.interpolation_steps
        known = (self.total_rows or 0) + interpolated
        if known > MAX_ROWS:
            raise ConfigError(
                f"generate asks for {known:_} rows (num_samples + per_class + interpolations x "
                f"interpolation_steps), more than the {MAX_ROWS:_} one job may write: lower the counts, "
                "or split the work into several jobs (e.g. generate.if_exists=new_version)"
            )

    @property
    def total_rows(self) -> int | None:
        """Rows of the modes whose count is known without the data (variants/interpolations need it)."""
        return self.num_samples + sum(self.per_class.values())


@dataclass
class ReportConfig:
    """The usefulness report: does the synthetic set help a downstream classifier?

    A small CNN recipe is trained for a fixed number of steps on the real training split, on it plus
    the synthetic set, each with and without classic augmentation, and on the synthetic set alone;
    all are tested on the held-out split (`train.val_fraction`) that the VAE never trained on.

    Args:
        enabled: compute the report with every generated dataset (manifest, card, console, Prefect).
        steps: optimizer steps of every classifier (the same for every condition).
        seeds: seeds per condition (>= 2 gives a spread).
        batch_size: classifier batch size.
        width: channels of the classifier's first stage.
        synthetic_share: share of each real+synthetic batch drawn from the synthetic set.
        max_synthetic: synthetic rows read back for the report (a seeded random sample of larger sets).
        flip: classic augmentation mirrors images left-right; null: only for RGB images.
    """

    enabled: bool = True
    steps: int = 500
    seeds: int = 2
    batch_size: int = 64
    width: int = 16
    synthetic_share: float = 0.5
    max_synthetic: int = 10_000
    flip: bool | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.steps >= 1, "steps", "must be >= 1"),
            (self.seeds >= 1, "seeds", "must be >= 1 (2 or more give a spread)"),
            (self.batch_size >= 2, "batch_size", "must be >= 2"),
            (self.width >= 1, "width", "must be >= 1"),
            (0 < self.synthetic_share < 1, "synthetic_share", "must be in (0, 1)"),
            (self.max_synthetic >= 10, "max_synthetic", "must be >= 10"),
        ]
        for ok, key, fix in checks:
            if not ok:
                raise ConfigError(f"report.{key}={getattr(self, key)!r}: {fix}")


@dataclass
class PipelineConfig:
    """The whole augmentation job.

    Args:
        data: the seed images.
        model: the VAE; `image_size`/`channels` are what the data is converted to (inferred from the
            data when the user leaves them unset: see `infer_from_data`).
        train: training settings.
        generate: sampling settings.
        ray: how to reach Ray.
        flow: Prefect orchestration (caching, retries, result storage).
        report: the usefulness report of the synthetic set.
        conditional: train a class-conditional VAE on the data's labels (sets `model.num_classes`).
        output_dir: where the model (`model/`), reports and, by default, the dataset go; None (the
            default): `./outputs/<data name>`, see `default_output_dir` (`outputs/digits` for the
            embedded digits, `outputs/flowers` for `data.path=/x/flowers`).

    Attributes:
        infer_from_data: the `model` keys ("image_size", "channels") that `load_config` found unset,
            to be set from the data by `pipelines.data.shape.resolve_data_shape` (empty once resolved,
            and for configs built otherwise, e.g. by `config_from_dict`: their values are final).
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: VAEConfig = field(default_factory=VAEConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    conditional: bool = True
    output_dir: str | None = None
    infer_from_data: tuple[str, ...] = field(default=(), init=False, compare=False)

    def __post_init__(self) -> None:
        # Local paths become absolute now: Ray workers and actors may run in another working directory
        # (e.g. Ray's `uv run` runtime env), where "./outputs" would point elsewhere.
        if self.data.path is not None:
            self.data.path = absolute_local(self.data.path)
        if self.output_dir is None:
            self.output_dir = default_output_dir(self.data)
        self.output_dir = absolute_local(self.output_dir)
        self.train.storage_path = absolute_local(self.train.storage_path)
        if self.generate.output is not None:
            self.generate.output = absolute_local(self.generate.output)
        if self.flow.result_storage is not None:
            self.flow.result_storage = absolute_local(self.flow.result_storage)

    @property
    def model_dir(self) -> str:
        """The stable location of the exported model that the sampling stage reads."""
        return self._output_root + "/model"

    @property
    def dataset_dir(self) -> str:
        """Where the synthetic dataset is written."""
        return self.generate.output or self._output_root + "/synthetic"

    @property
    def _output_root(self) -> str:
        assert self.output_dir is not None  # set by __post_init__
        return self.output_dir.rstrip("/")

    def to_dict(self, redact: bool = False) -> dict[str, Any]:
        """Plain JSON/YAML-ready dict (tuples as lists).

        Args:
            redact: apply `pipelines.redaction.redact_config` (secret-looking values such as storage
                options' keys, secrets and tokens become "<redacted>", URLs lose their user:password):
                use it for anything written to files or logs.
        """
        out = _plain(dataclasses.asdict(self))
        del out["infer_from_data"]  # not a setting: the resolved values are in `model`
        return redact_config(out) if redact else out


#: Characters kept in a data name used as a directory name (others become "_").
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def data_name(data: DataConfig) -> str:
    """A short directory-safe name of the data: the source for the built-in sources ("digits",
    "mnist", ...), the last part of `data.path` for "folder"/"parquet" (`/x/flowers` -> "flowers",
    `s3://bucket/pets/` -> "pets", `/x/pets.parquet` -> "pets"), or the source when it has no usable name.
    """
    if data.source not in URL_SOURCES or not data.path:
        return data.source
    last = data.path.split("://", 1)[-1].rstrip("/").rsplit("/", 1)[-1]
    if last.lower().endswith(".parquet"):
        last = last[: -len(".parquet")]
    name = _UNSAFE_NAME_CHARS.sub("_", last).strip("._-")
    return name or data.source


def default_output_dir(data: DataConfig) -> str:
    """`./outputs/<data_name(data)>`: the `output_dir` of a config that does not set one."""
    return f"./outputs/{data_name(data)}"


def absolute_local(path: str) -> str:
    """An absolute form of a local path; URLs with a scheme (s3://, gs://, memory://...) unchanged."""
    if "://" in path:
        return path
    return os.path.abspath(os.path.expanduser(path))


def redact_secrets(options: Any) -> Any:
    """Copy of `options` safe to store: `pipelines.redaction.redact_config` (kept for existing callers)."""
    return redact_config(options)


# ---------------------------------------------------------------------------------------- builder
def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; convert lists to tuples and ints to floats."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if float in args:
            _check_finite(value, key)
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}={value!r}: expected {_type_name(tp)}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}={value!r}: use one of {list(args)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of settings, got {value!r}")
        return build(tp, value, key)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}={value!r}: expected a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}={value!r}: expected a list of {len(args)} values")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r}: expected a mapping")
        vt = args[1] if args else Any
        return {str(k): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            _check_finite(value, key)
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise ConfigError(f"{key}={value!r}: expected {_type_name(tp)}")


def _check_finite(value: Any, key: str) -> None:
    """A float setting must be a finite number: YAML's .inf/.nan would pass every "> 0" check."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}={value!r}: give a finite number (not inf or nan)")


def build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from a (nested) dict, rejecting unknown keys and wrong types.

    Args:
        cls: a dataclass type.
        data: its settings; missing keys keep their defaults.
        prefix: dotted path of `cls` in the whole config, for messages ("train").

    Returns:
        An instance of `cls` (which then runs its own validation).
    """
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(data) - set(names))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key(s) {[where + k for k in unknown]}: valid keys under "
            f"'{prefix or '<top level>'}' are {names}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`["train.epochs=5", "model.hidden_channels=[32,64]"]` -> nested dict (values parsed as YAML)."""
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: write it as key.subkey=value (e.g. train.epochs=5)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({exc.problem})") from None
        _set_dotted(tree, key.strip(), value)
    return tree


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    settings: dict[str, Any] | None = None,
) -> PipelineConfig:
    """Defaults, then the YAML file at `path`, then `settings`, then dotted overrides.

    Args:
        path: a YAML file with any subset of the `PipelineConfig` keys, or None.
        overrides: "a.b=value" strings (YAML values), applied last.
        settings: nested sections as in the YAML file (e.g. a Prefect flow's parameter).

    Returns:
        The validated `PipelineConfig`; `model.image_size`/`model.channels` not given here are listed
        in its `infer_from_data` (see `pipelines.data.shape.resolve_data_shape`).

    Raises:
        ConfigError: unknown key, wrong type or invalid value (the message names the key).
    """
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file '{path}' not found: check the path")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file '{path}' is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file '{path}' must hold a mapping of sections (data:, model:, ...)")
        tree = loaded
    if settings:
        if not isinstance(settings, dict):
            raise ConfigError(f"config settings must be a mapping of sections, got {type(settings).__name__}")
        tree = _merge(tree, settings)
    tree = _merge(tree, parse_overrides(overrides or []))
    model = tree.get("model") or {}
    if "recon_loss" not in model and model.get("output_activation", "sigmoid") != "sigmoid":
        # Bernoulli needs [0, 1]; other ranges get the calibrated Gaussian (see default_likelihood).
        tree = _merge(tree, {"model": {"recon_loss": "gaussian"}})
    cfg = build(PipelineConfig, tree)
    given = tree.get("model") or {}
    cfg.infer_from_data = tuple(key for key in ("image_size", "channels", "recon_loss") if key not in given)
    return cfg


def save_config(cfg: PipelineConfig) -> str:
    """The merged config as YAML text, secrets redacted (written next to the outputs by each stage)."""
    return yaml.safe_dump(cfg.to_dict(redact=True), sort_keys=False)


def config_from_dict(data: dict[str, Any]) -> PipelineConfig:
    """Inverse of `PipelineConfig.to_dict` (strict)."""
    return build(PipelineConfig, data)
