"""The augmentation pipeline as a Prefect flow: data -> train -> evaluate -> generate -> validate.

The flow only orchestrates: each stage is a small task that calls a plain function of
`pipelines.stages`. Training is cached across runs on (data fingerprint, training config, training
code), so a re-run with the same data and training settings reuses the model and only re-samples.
The cache is our own validated JSON record (`pipelines.training_cache`), keyed by
`training_cache_key`: Prefect persists no result of this flow (`persist_result=False` everywhere, so
no task has a Prefect `cache_key_fn`), because a stored Prefect result names its own serializer and a
planted one can ask for pickle. Tasks pass typed results (`pipelines.stages`); the flow returns its
`RunSummary` as a dict.
"""

from __future__ import annotations

import base64
from typing import Any

import fsspec
from prefect import Flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from pipelines import stages
from pipelines.checks import check_job
from pipelines.config import (
    DataConfig,
    FlowConfig,
    GenerateConfig,
    ModelSection,
    PipelineConfig,
    RayConfig,
    ReportConfig,
    TrainConfig,
    load_config,
)
from pipelines.console import console
from pipelines.data.imageset import ImageSet
from pipelines.dataset_format import PICTURE, DatasetSummary
from pipelines.errors import USER_ERRORS
from pipelines.evaluate import QualityReport
from pipelines.redaction import redact_config, redact_overrides, secret_parameters_error
from pipelines.sections import Section
from pipelines.stages import DatasetCheck, RunSummary
from pipelines.training_cache import TrainingCache, TrainingRecord
from vae.config import VAEConfig

FLOW_NAME = "vae-augmentation"


def _backoff(first: float, retries: int) -> list[float]:
    return [first * 2**i for i in range(retries)]


def transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry only what may pass on a second try.

    User errors (bad config, unreadable data, an existing output, a missing model) fail the same way
    every time: they fail at once, without the retries' backoff and their tracebacks.
    """
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # the result itself cannot be read: let the retry decide
        return True
    return not isinstance(exc, USER_ERRORS)


@task(name="load-data", persist_result=False, cache_policy=NO_CACHE)
def load_data_task(cfg: PipelineConfig) -> ImageSet:
    """Load and validate the seed images (kept in memory for the next stages, never persisted)."""
    with console.stage("load data") as stage:
        data = stages.load_data(cfg)
        stage.note(f"{stages.describe_data(cfg, data)}, fingerprint {data.fingerprint()[:12]}")
    return data


@task(name="train", persist_result=False, cache_policy=NO_CACHE)
def train_task(cfg: PipelineConfig, data: ImageSet, cache: TrainingCache) -> TrainingRecord:
    """Train on Ray (or locally, or as a Ray Job with `ray.submit_job`) and export.

    Args:
        cfg: the pipeline config.
        data: the loaded images.
        cache: this run's training cache (its key and data fingerprint go into the record).

    Returns:
        The record the training cache stores.
    """
    result = stages.train_job_stage(cfg) if cfg.ray.submit_job else stages.train_stage(cfg, data)
    return TrainingRecord.of(result, cache.data_fingerprint, cache.key)


@task(name="evaluate", persist_result=False, cache_policy=NO_CACHE)
def evaluate_task(cfg: PipelineConfig, data: ImageSet, model_dir: str) -> QualityReport:
    """Held-out quality figures of the trained model."""
    with console.stage("evaluate") as stage:
        quality = stages.evaluate_stage(cfg, data, model_dir)
        stage.note(quality.line())
    return quality


@task(name="generate", persist_result=False, cache_policy=NO_CACHE)
def generate_task(cfg: PipelineConfig, data: ImageSet, model_dir: str) -> DatasetSummary:
    """Fan the sampling out over Ray, measure the set's usefulness and commit the Parquet dataset."""
    return stages.generate_stage(cfg, data, model_dir, run_time=_scheduled_time())


@task(name="validate-dataset", persist_result=False, cache_policy=NO_CACHE)
def validate_task(dataset_dir: str, expected_rows: int, storage_options: dict[str, Any]) -> DatasetCheck:
    """Re-open the committed dataset through the reader and check its row count."""
    with console.stage("validate") as stage:
        checked = stages.validate_stage(dataset_dir, expected_rows, storage_options)
        stage.note(f"{checked.rows} rows in {checked.files} files read back")
    return checked


def _api_log() -> Any:
    """A sink sending console lines to this flow run's log in the Prefect API (its UI) only.

    Not through the run logger's console handler: the console already printed them (a served or
    deployed run would show every line twice).
    """
    import logging

    run_logger = get_run_logger()
    source = logging.getLogger("prefect.flow_runs")
    sink = logging.getLogger("prefect.flow_runs.vaeaug")
    sink.propagate = False
    sink.handlers = [h for h in source.handlers if type(h).__name__ == "APILogHandler"]
    sink.setLevel(logging.INFO)
    return logging.LoggerAdapter(sink, dict(getattr(run_logger, "extra", {}) or {})).info


def _scheduled_time() -> Any:
    """When this flow run was scheduled for (per-run seeds derive from it), else None."""
    from prefect.runtime import flow_run

    return flow_run.scheduled_start_time


def _train(cfg: PipelineConfig, data: ImageSet, retry: dict[str, Any]) -> tuple[TrainingRecord, bool]:
    """The training task through the training cache: (its record, whether it came from the cache).

    The record is read only when `flow.cache_training` is on, and written after every training (so
    that `cache_training=false` refreshes it). Its model must still have the recorded checksum.
    """
    cache = TrainingCache.open(cfg, data.fingerprint())
    with console.stage("train") as stage:
        record = cache.lookup() if cfg.flow.cache_training else None
        cached = record is not None
        if record is None:
            record = train_task.with_options(**retry)(cfg, data, cache)
            cache.store(record)
        stage.note("reused the cached model: same data and training settings" if cached else "exported")
    return record, cached


def _run_stages(cfg: PipelineConfig) -> tuple[RunSummary, TrainingRecord]:
    """Check the job, then data -> train (or the cache) -> evaluate -> generate -> validate.

    Returns:
        The run's summary (timings up to the validation) and the training's record.
    """
    with console.stage("checks") as stage:  # before any work: user errors cost seconds
        checked = check_job(cfg)
        stage.note(f"dataset will go to {checked.dataset_dir}")
    if checked.shape_note:
        console.line(checked.shape_note)
    stages.save_merged_config(cfg)
    retry = {
        "retries": cfg.flow.retries,
        "retry_delay_seconds": _backoff(cfg.flow.retry_delay_seconds, cfg.flow.retries),
        "retry_condition_fn": transient,
    }
    data = load_data_task.with_options(**retry)(cfg)
    trained, cached = _train(cfg, data, retry)
    quality = evaluate_task(cfg, data, trained.model_dir)
    dataset = generate_task.with_options(**retry)(cfg, data, trained.model_dir)
    validated = validate_task(dataset.dataset_dir, dataset.rows, cfg.generate.storage_options)
    summary = RunSummary(
        model_dir=trained.model_dir,
        model_sha256=trained.sha256,
        training_cached=cached,
        training_worker_nodes=list(trained.worker_nodes),
        run_name=trained.run_name,
        run_dir=trained.run_dir,
        grid_path=trained.grid_path,
        final_epoch=trained.history[-1] if trained.history else {},
        quality=quality,
        dataset=dataset,
        validated=validated,
        timings=dict(console.timings),
    )
    return summary, trained


#: The flow's parameters that are config settings: `PipelineConfig`'s sections and top-level keys.
SETTINGS = ("data", "model", "train", "generate", "ray", "flow", "report", "conditional", "output_dir")


def _settings(parameters: dict[str, Any]) -> dict[str, Any]:
    """The config settings among the flow's `parameters`: those given, sections as plain mappings.

    A section is a mapping of any of its keys (`{"epochs": 3}`: the others keep their defaults), or a
    section object from a Python caller (`TrainConfig(epochs=3)`: all of its keys).
    """
    return {
        key: value.to_dict() if isinstance(value, Section | VAEConfig) else value
        for key, value in parameters.items()
        if key in SETTINGS and value is not None
    }


def _refuse_secret_parameters(
    settings: dict[str, Any], config_path: str | None, overrides: list[str] | None
) -> None:
    """Refuse `settings`/`overrides` values holding credentials (a `ConfigError`: never retried).

    Prefect stored the parameters when it created this run, before this body runs: the stored copy
    is replaced by a redacted one first, so that the refused credentials do not stay in its database.
    """
    refusal = secret_parameters_error(settings, overrides)
    if refusal is None:
        return
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    safe = {**redact_config(settings), "config_path": config_path, "overrides": redact_overrides(overrides)}
    run_id = flow_run.id  # None when called as a plain function (`augmentation_flow.fn`): nothing stored
    try:
        if run_id is not None:
            with get_client(sync_client=True) as client:
                client.update_flow_run(run_id, parameters=safe)
    except Exception as exc:  # the refusal itself matters more: say so and go on to it
        console.line(
            f"cannot redact the stored parameters of run {run_id} ({type(exc).__name__}): delete the run"
        )
    raise refusal


class _ParameterCheckedFlow(Flow):
    """A flow that refuses credentials among its parameters before Prefect stores them.

    Prefect serializes the parameters to create the flow run (its database, API and UI keep them):
    refusing here means a refused call leaves no run and no copy. Runs created another way (a
    deployment's run started from the UI or API) are checked again at the start of the body.
    """

    def serialize_parameters(self, parameters: dict[str, Any]) -> dict[str, Any]:
        refusal = secret_parameters_error(_settings(parameters), parameters.get("overrides"))
        if refusal is not None:
            raise refusal
        return super().serialize_parameters(parameters)


def _augmentation_flow(
    config_path: str | None = None,
    overrides: list[str] | None = None,
    data: DataConfig | None = None,
    model: ModelSection | None = None,
    train: TrainConfig | None = None,
    generate: GenerateConfig | None = None,
    ray: RayConfig | None = None,
    flow: FlowConfig | None = None,
    report: ReportConfig | None = None,
    conditional: bool | None = None,
    output_dir: str | None = None,
) -> dict[str, Any]:
    """Train a VAE on the configured images and commit a synthetic Parquet dataset.

    The settings come from the defaults, then `config_path`, then the section parameters, then
    `overrides`. A section takes any subset of its keys (`train={"epochs": 3}`: the other keys keep
    their values); unknown keys and bad values are one-line `ConfigError`s naming the key.

    Args:
        config_path: a YAML file of settings (sections data:, model:, train:, ...), applied first.
        overrides: dotted "key=value" overrides (`train.epochs=5`), applied last.
        data: the seed images: source, path, split, limit, storage options.
        model: the VAE; `image_size`, `channels` and `recon_loss` left unset follow the data.
        train: training: epochs, batch size, learning rate, workers, where runs are stored.
        generate: sampling: counts per mode, seed, temperature, where the dataset goes.
        ray: how to reach Ray (an address, or a local Ray of this machine).
        flow: orchestration: training cache, retries.
        report: the usefulness report of the synthetic set.
        conditional: train a class-conditional VAE on the data's labels (default true).
        output_dir: where the model, reports and by default the dataset go (default
            `./outputs/<data name>`).

    Returns:
        Summary: model dir and checksum, whether training came from the cache, quality figures,
        the dataset location, rows and per-class counts, stage timings.

    Raises:
        ConfigError: a bad config, or settings/overrides holding credentials (Prefect stores the
            parameters: pass credentials by environment or credential files; a YAML file given as
            `config_path` may hold them, only its path is a parameter).
    """
    settings = _settings(locals())  # the section parameters given (locals() holds just the parameters)
    _refuse_secret_parameters(settings, config_path, overrides)
    with console.mirrored(_api_log()):
        cfg = load_config(config_path, overrides, settings=settings)  # strict: fails before any Ray work
        summary, trained = _run_stages(cfg)
        _publish_artifacts(cfg, summary, trained)
    return summary.to_dict()  # Prefect's edge: the flow run's result is a plain dict


# validate_parameters=False: `load_config` validates the settings (partial sections, one-line
# `ConfigError`s naming the key, where Prefect's validation would need whole sections and raise its
# own error); the type hints still give Prefect the parameters' schema, hence its UI form.
augmentation_flow = _ParameterCheckedFlow(
    _augmentation_flow, name=FLOW_NAME, log_prints=False, persist_result=False, validate_parameters=False
)


# ------------------------------------------------------------------------------------ artifacts
def _png_data_url(path: str) -> str:
    try:
        with fsspec.open(path, "rb") as f:
            png = f.read()
    except OSError:
        return path
    return f"data:image/png;base64,{base64.b64encode(png).decode()}"


def _grid_markdown(grid_path: str) -> str:
    return f"![samples and reconstructions]({_png_data_url(grid_path)})"


def _publish_artifacts(cfg: PipelineConfig, summary: RunSummary, trained: TrainingRecord) -> None:
    """The run's report (markdown) and its per-class table, as artifacts of this flow run."""
    create_markdown_artifact(
        key="augmentation-report",
        markdown=_report_markdown(cfg, summary, trained),
        description="VAE augmentation run",
    )
    create_table_artifact(
        key="class-counts",
        table=_class_table(summary.dataset),
        description="synthetic rows per class, label fidelity and curation acceptance",
    )


def _report_markdown(cfg: PipelineConfig, summary: RunSummary, trained: TrainingRecord) -> str:
    rows = "\n".join(
        f"| {int(r['epoch'])} | {r['train_loss']:.3f} | {r.get('val_loss', float('nan')):.3f} "
        f"| {r['train_recon']:.3f} | {r['train_kl']:.3f} | {r['samples_per_s']:.0f} |"
        for r in trained.history
    )
    quality_rows = "\n".join(f"| {k} | {v} |" for k, v in summary.quality.formatted().items())
    dataset = summary.dataset
    return f"""# VAE augmentation run

**Dataset**: `{dataset.dataset_dir}`: {dataset.rows} rows in {len(dataset.files)} files
(committed).
**Model**: `{summary.model_dir}` (sha256 `{summary.model_sha256[:12]}`,
{"reused from the training cache" if summary.training_cached else "trained in this run"}).
**Data**: `{cfg.data.source}` ({trained.data_fingerprint[:12]}).

## Quality (held-out)
| figure | value |
| --- | --- |
{quality_rows}

## Training
| epoch | train loss | held-out loss | recon | KL | samples/s |
| --- | --- | --- | --- | --- | --- |
{rows}

## Usefulness (does the synthetic set help a downstream classifier?)
{_usefulness_markdown(dataset)}

## Samples and reconstructions
{_grid_markdown(trained.grid_path)}

## Load it
```python
{stages.how_to_load(dataset.dataset_dir)}
```
"""


def _usefulness_markdown(dataset: DatasetSummary) -> str:
    from pipelines.generate.card import usefulness_section

    body = usefulness_section(dataset.usefulness or {"skipped": dataset.usefulness_note}, {})
    text = "\n".join(body[2:])  # without the card's own heading
    if dataset.picture_path:
        text = text.replace(f"]({PICTURE})", f"]({_png_data_url(dataset.picture_path)})")
    return text


def _class_table(dataset: DatasetSummary) -> list[dict[str, Any]]:
    """One row per class: rows, and the label fidelity and acceptance rate where measured."""
    fidelity = (dataset.usefulness or {}).get("fidelity_per_class", {})
    curation = dataset.curation.get("per_class", {})
    table = []
    for name, rows in dataset.per_class.items():
        row: dict[str, Any] = {"class": str(name), "rows": int(rows)}
        if name in fidelity:
            row["label_fidelity"] = round(float(fidelity[name]), 4)
        if name in curation:
            row["acceptance_rate"] = round(float(curation[name]["acceptance_rate"]), 4)
        table.append(row)
    return table


__all__ = ["FLOW_NAME", "augmentation_flow"]
