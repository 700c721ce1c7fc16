"""Typed pipeline configuration: defaults -> YAML file -> settings -> dotted command-line overrides.

One pydantic model per stage (`DataConfig`, `TrainConfig`, `GenerateConfig`, `RayConfig`,
`FlowConfig`, `ReportConfig`; the model's `VAEConfig` is a plain dataclass of `vae`), gathered in
`PipelineConfig`. Unknown keys, wrong types and invalid values are one-line `ConfigError`s naming the
dotted key (see `pipelines.sections.Section`); the merged config is saved next to the outputs
(`config_yaml`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self, get_type_hints

import yaml
from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    PrivateAttr,
    create_model,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue

from pipelines.data.config import URL_SOURCES, DataConfig
from pipelines.redaction import redact_config
from pipelines.sections import Section, StorageOptions, describe_fields, str_keys
from pipelines.storage import basename, join
from vae.config import ConfigError, VAEConfig


class RayConfig(Section):
    """How to reach Ray.

    Args:
        address: an existing cluster ("ray://host:10001", "host:6379" or "auto"); None uses
            `RAY_ADDRESS` if set, else starts a local Ray sized to this machine.
        num_cpus: CPUs of a local Ray (None: all of this machine's).
        submit_job: run the stage as a Ray Job on the cluster's dashboard address (KubeRay) and follow it.
    """

    section: ClassVar[str] = "ray"

    address: str | None = None
    num_cpus: int | None = Field(None, ge=1)
    submit_job: bool = False

    fixes: ClassVar[dict[str, str]] = {"num_cpus": "must be >= 1 or null (all CPUs)"}


class FlowConfig(Section):
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

    section: ClassVar[str] = "flow"

    result_storage: str | None = None
    cache_training: bool = True
    retries: int = Field(2, ge=0)
    retry_delay_seconds: float = Field(10.0, ge=0)


#: Largest `train.lr`: Adam moves every weight by up to lr per step, so far larger values overflow
#: float32 weights at once (beyond ~3e38 torch refuses the step with a traceback).
MAX_LR = 10.0


class TrainConfig(Section):
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

    section: ClassVar[str] = "train"

    epochs: int = Field(30, ge=1)
    min_steps: int = Field(3000, ge=0)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(2e-3, gt=0, le=MAX_LR)
    weight_decay: float = Field(0.0, ge=0)
    val_fraction: float = Field(0.1, ge=0, lt=1)
    seed: int = 0
    num_workers: int = Field(1, ge=1)
    use_gpu: bool | None = None
    mixed_precision: bool = False
    checkpoint_every: int = Field(1, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    max_failures: int = Field(0, ge=-1)
    storage_path: str = Field("./runs", min_length=1)
    run_name: str | None = None
    streaming: Literal["auto", "always", "never"] = "auto"
    stream_above_mb: float = 512.0
    cpus_per_worker: int | None = Field(None, ge=1)
    backend: Literal["ray", "local"] = "ray"

    fixes: ClassVar[dict[str, str]] = {
        "min_steps": "must be >= 0 (0: exactly `epochs` passes)",
        # Adam moves each weight by up to lr per step: beyond MAX_LR float32 weights overflow.
        "lr": f"must be in (0, {MAX_LR:g}] (Adam's step size; 1e-3 is typical)",
        "num_workers": "must be >= 1 (one Ray Train worker per process)",
        "max_failures": "must be >= 0, or -1 for unlimited",
        "storage_path": "give a local path or s3:// / gs:// URL",
    }

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.batch_size < self.num_workers:
            raise ConfigError(
                f"train.batch_size={self.batch_size} is smaller than train.num_workers="
                f"{self.num_workers}: each worker needs at least one sample per batch"
            )
        return self

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


class GenerateConfig(Section):
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

    section: ClassVar[str] = "generate"

    num_samples: int = Field(10_000, ge=0, le=MAX_ROWS)
    per_class: Annotated[dict[str, Annotated[int, Field(ge=0, le=MAX_ROWS)]], BeforeValidator(str_keys)] = (
        Field(default_factory=dict)
    )
    variants_per_image: int = Field(0, ge=0, le=MAX_ROWS)
    variant_temperature: float = Field(1.0, ge=0)
    variant_limit: int | None = Field(None, ge=1)
    interpolations: int = Field(0, ge=0, le=MAX_ROWS)
    interpolation_steps: int = Field(8, ge=2)
    temperature: float = Field(1.0, ge=0)
    seed: int | str = 0  # an int >= 0 or "per_run" (_check names the fix; a Literal would not)
    shard_size: int = Field(10_000, ge=1, le=MAX_SHARD_ROWS)
    batch_size: int = Field(256, ge=1, le=MAX_DECODE_BATCH)
    num_actors: int | None = Field(None, ge=1)
    cpus_per_actor: int = Field(1, ge=1)
    output: str | None = None
    if_exists: Literal["error", "overwrite", "new_version"] = "error"
    png_compression: int = Field(1, ge=0, le=9)
    storage_options: StorageOptions = Field(default_factory=dict)
    curation_threshold: float | None = Field(None, gt=0, lt=1)
    curation_max_rounds: int = Field(50, ge=1)

    fixes: ClassVar[dict[str, str]] = {
        "per_class": f"counts must be in 0..{MAX_ROWS:_}",
        "num_actors": "must be >= 1 or null",
        "curation_threshold": "must be in (0, 1), or null for no curation",
    }

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not (self.seed == "per_run" or (isinstance(self.seed, int) and self.seed >= 0)):
            raise ConfigError(
                f"generate.seed={self.seed!r}: must be an int >= 0, or per_run for a seed derived "
                "from each run's time"
            )
        self._check_known_rows()
        return self

    def _check_known_rows(self) -> None:
        """The rows known without the data (prior, per-class, interpolations) within `MAX_ROWS`."""
        known = (
            self.num_samples + sum(self.per_class.values()) + self.interpolations * self.interpolation_steps
        )
        if known > MAX_ROWS:
            raise ConfigError(
                f"generate asks for {known:_} rows (num_samples + per_class + interpolations x "
                f"interpolation_steps), more than the {MAX_ROWS:_} one job may write: lower the counts, "
                "or split the work into several jobs (e.g. generate.if_exists=new_version)"
            )


class ReportConfig(Section):
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

    section: ClassVar[str] = "report"

    enabled: bool = True
    steps: int = Field(500, ge=1)
    seeds: int = Field(2, ge=1)
    batch_size: int = Field(64, ge=2)
    width: int = Field(16, ge=1)
    synthetic_share: float = Field(0.5, gt=0, lt=1)
    max_synthetic: int = Field(10_000, ge=10)
    flip: bool | None = None

    fixes: ClassVar[dict[str, str]] = {"seeds": "must be >= 1 (2 or more give a spread)"}


def _model_settings() -> type[Section]:
    """`VAEConfig`'s fields as a `Section` (`vae` knows nothing of pydantic): the same strict types,
    int -> float for float fields, and one-line errors as every other section."""
    hints = get_type_hints(VAEConfig)
    fields = {f.name: (hints[f.name], f.default) for f in dataclasses.fields(VAEConfig)}
    settings = create_model("ModelSettings", __base__=Section, **fields)  # type: ignore[call-overload]
    settings.section = "model"
    return settings


_ModelSettings = _model_settings()


def _model_section(value: Any) -> Any:
    """The `model` section from a mapping: checked as a `Section`, then `VAEConfig`'s own checks."""
    if isinstance(value, VAEConfig):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"model: expected a mapping of settings, got {value!r}")
    _check_int_lists(value)  # lists in a config, tuples in `VAEConfig`
    lists = {k: tuple(v) for k, v in value.items() if k in ("image_size", "hidden_channels")}
    checked = _ModelSettings.from_dict({**value, **lists})
    return VAEConfig(**{name: getattr(checked, name) for name in value})


def _check_int_lists(model: dict[str, Any]) -> None:
    """`model.image_size` and `model.hidden_channels` are lists of ints in a config (`VAEConfig` itself
    also takes a side for a square size, and whole floats, from code and saved models)."""
    for key, length in (("image_size", 2), ("hidden_channels", None)):
        if key not in model:
            continue
        items = model[key]
        if not isinstance(items, list | tuple):
            raise ConfigError(f"model.{key}={items!r}: expected a list")
        if length is not None and len(items) != length:
            raise ConfigError(f"model.{key}={items!r}: expected a list of {length} values")
        for i, item in enumerate(items):
            if isinstance(item, bool) or not isinstance(item, int):
                raise ConfigError(f"model.{key}[{i}]={item!r}: expected int")


class _DescribedByDocstring:
    """JSON schema of `VAEConfig` described by its docstring, as the sections' (see `describe_fields`)."""

    def __get_pydantic_json_schema__(
        self, core_schema: Any, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        describe_fields(handler.resolve_ref_schema(schema), VAEConfig.__doc__ or "")
        return schema


#: The `model` section: a `VAEConfig` built from a mapping by `_model_section`.
ModelSection = Annotated[VAEConfig, BeforeValidator(_model_section), _DescribedByDocstring()]


class PipelineConfig(Section):
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
        infer_from_data: the `model` keys ("image_size", "channels", "recon_loss") that `load_config`
            found unset, to be set from the data by `pipelines.data.shape.resolve_data_shape` (empty
            once resolved, and for configs built otherwise, e.g. by `config_from_dict`: their values
            are final). Bookkeeping, not a setting: neither in `to_dict` nor compared by `==`.
    """

    # Assignments replace whole, already validated sections (`cfg.model = ...` once the data's shape
    # is known); validating them again would re-run `_resolve_paths`, which assigns fields itself.
    model_config = ConfigDict(validate_assignment=False)

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelSection = Field(default_factory=VAEConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    flow: FlowConfig = Field(default_factory=FlowConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    conditional: bool = True
    output_dir: str | None = None
    _infer_from_data: tuple[str, ...] = PrivateAttr(default=())

    @model_validator(mode="after")
    def _resolve_paths(self) -> Self:
        # Local paths become absolute now: Ray workers and actors may run in another working directory
        # (e.g. Ray's `uv run` runtime env), where "./outputs" would point elsewhere.
        if self.data.path is not None:
            self.data.path = absolute_local(self.data.path)
        self.output_dir = absolute_local(self.output_dir or default_output_dir(self.data))
        self.train.storage_path = absolute_local(self.train.storage_path)
        if self.generate.output is not None:
            self.generate.output = absolute_local(self.generate.output)
        if self.flow.result_storage is not None:
            self.flow.result_storage = absolute_local(self.flow.result_storage)
        return self

    @property
    def infer_from_data(self) -> tuple[str, ...]:
        """The `model` keys to set from the data (see the class docstring)."""
        return self._infer_from_data

    @infer_from_data.setter
    def infer_from_data(self, keys: tuple[str, ...]) -> None:
        self._infer_from_data = tuple(keys)

    def __eq__(self, other: object) -> bool:
        """Equal settings (`infer_from_data` is bookkeeping, not compared)."""
        return isinstance(other, PipelineConfig) and self.to_dict() == other.to_dict()

    @property
    def model_dir(self) -> str:
        """The stable location of the exported model that the sampling stage reads."""
        return join(self._output_root, "model")

    @property
    def dataset_dir(self) -> str:
        """Where the synthetic dataset is written."""
        return self.generate.output or join(self._output_root, "synthetic")

    @property
    def _output_root(self) -> str:
        assert self.output_dir is not None  # set by _resolve_paths
        return self.output_dir

    def to_dict(self, redact: bool = False) -> dict[str, Any]:
        """Plain JSON/YAML-ready dict (tuples as lists), in the fields' order.

        Args:
            redact: apply `pipelines.redaction.redact_config` (secret-looking values such as storage
                options' keys, secrets and tokens become "<redacted>", URLs lose their user:password):
                use it for anything written to files or logs.
        """
        out = self.model_dump(mode="json")
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
    last = basename(data.path.split("://", 1)[-1])
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
    if isinstance(overrides, str):  # e.g. a flow run's parameter typed in as one string
        raise ConfigError(
            f"overrides={overrides!r}: give a list of key=value strings, e.g. ['train.epochs=5']"
        )
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


def _read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping of sections in the YAML file at `path`."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{path}' not found: check the path")
    try:
        loaded = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file '{path}' is not valid YAML: {exc}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of sections (data:, model:, ...)")
    return loaded


def _with_default_likelihood(tree: dict[str, Any]) -> dict[str, Any]:
    """`tree` with `model.recon_loss: gaussian` when it leaves the loss unset for a non-sigmoid output:
    Bernoulli needs [0, 1]; other ranges get the calibrated Gaussian (see default_likelihood)."""
    model = tree.get("model")
    if isinstance(model, dict) and "recon_loss" not in model:
        if model.get("output_activation", "sigmoid") != "sigmoid":
            return _merge(tree, {"model": {"recon_loss": "gaussian"}})
    return tree


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
    tree = _read_yaml(path) if path is not None else {}
    if settings:
        if not isinstance(settings, dict):
            raise ConfigError(f"config settings must be a mapping of sections, got {type(settings).__name__}")
        tree = _merge(tree, settings)
    tree = _merge(tree, parse_overrides(overrides or []))
    tree = _with_default_likelihood(tree)
    cfg = PipelineConfig.from_dict(tree)
    given = tree.get("model") if isinstance(tree.get("model"), dict) else {}
    cfg.infer_from_data = tuple(key for key in ("image_size", "channels", "recon_loss") if key not in given)
    return cfg


def config_yaml(cfg: PipelineConfig) -> str:
    """The merged config as YAML text, secrets redacted (written next to the outputs by each stage)."""
    return yaml.safe_dump(cfg.to_dict(redact=True), sort_keys=False)


def config_from_dict(data: dict[str, Any]) -> PipelineConfig:
    """Inverse of `PipelineConfig.to_dict` (strict: every key known, every value valid)."""
    return PipelineConfig.from_dict(data)
