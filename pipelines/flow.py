"""The augmentation pipeline as a Prefect flow: data -> train -> evaluate -> generate -> validate.

The flow only orchestrates: each stage is a small task that calls a plain function of
`pipelines.stages`. Training is cached across runs on (data fingerprint, training config, training
code), so a re-run with the same data and training settings reuses the model and only re-samples.
The cache is our own validated JSON record (`pipelines.training_cache`): Prefect persists no result
of this flow (`persist_result=False` everywhere), because a stored Prefect result names its own
serializer and a planted one can ask for pickle.
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
from pipelines.config import PipelineConfig, load_config
from pipelines.console import console
from pipelines.data.imageset import ImageSet
from pipelines.errors import USER_ERRORS
from pipelines.redaction import redact_config, redact_overrides, secret_parameters_error
from pipelines.training_cache import TrainingRecord, load_record, record_path, save_record, training_key

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
def train_task(cfg: PipelineConfig, data: ImageSet, data_fingerprint: str, key: str) -> TrainingRecord:
    """Train on Ray (or locally) and export.

    Args:
        cfg: the pipeline config.
        data: the loaded images.
        data_fingerprint: `data.fingerprint()` (computed once by the caller).
        key: the training cache key the record is stored under.

    Returns:
        The record the training cache stores.
    """
    result = stages.train_stage(cfg, data)
    return TrainingRecord(
        model_dir=result.model_dir,
        sha256=result.sha256,
        history=list(result.history),
        grid_path=result.grid_path,
        data_fingerprint=data_fingerprint,
        key=key,
        worker_nodes=[w.get("node_id") for w in getattr(result, "workers", [])],
        run_name=getattr(result, "run_name", None) or None,
        run_dir=getattr(result, "run_dir", None) or None,
    )


@task(name="evaluate", persist_result=False, cache_policy=NO_CACHE)
def evaluate_task(cfg: PipelineConfig, data: ImageSet, model_dir: str) -> dict[str, float]:
    """Held-out quality figures of the trained model."""
    with console.stage("evaluate") as stage:
        quality = stages.evaluate_stage(cfg, data, model_dir)
        stage.note(stages.quality_line(quality))
    return quality


@task(name="generate", persist_result=False, cache_policy=NO_CACHE)
def generate_task(cfg: PipelineConfig, data: ImageSet, model_dir: str) -> dict[str, Any]:
    """Fan the sampling out over Ray, measure the set's usefulness and commit the Parquet dataset."""
    return stages.generate_stage(cfg, data, model_dir, run_time=_scheduled_time())


@task(name="validate-dataset", persist_result=False, cache_policy=NO_CACHE)
def validate_task(dataset_dir: str, expected_rows: int, storage_options: dict[str, Any]) -> dict[str, Any]:
    """Re-open the committed dataset through the reader and check its row count."""
    with console.stage("validate") as stage:
        checked = stages.validate_stage(dataset_dir, expected_rows, storage_options)
        stage.note(f"{checked['rows']} rows in {checked['files']} files read back")
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


def _training_inputs(cfg: PipelineConfig) -> dict[str, Any]:
    """The parts of the config that determine the trained model (the cache key's inputs).

    Redacted: the key is derived from them and secrets must not reach anything derived or stored.
    """
    full = cfg.to_dict(redact=True)
    return {k: full[k] for k in ("data", "model", "train", "conditional", "output_dir")}


def _model_still_there(record: TrainingRecord) -> bool:
    from vae.io import ModelFileError, model_checksum

    try:
        return model_checksum(record.model_dir) == record.sha256
    except (ModelFileError, OSError):
        return False


def _train(cfg: PipelineConfig, data: ImageSet, retry: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The training task through the training cache: (its summary, whether it came from the cache).

    The record is read only when `flow.cache_training` is on, and written after every training (so
    that `cache_training=false` refreshes it). Its model must still have the recorded checksum.
    """
    fingerprint = data.fingerprint()
    key = training_key(_training_inputs(cfg), fingerprint)
    assert cfg.output_dir is not None  # set by PipelineConfig.__post_init__
    path = record_path(cfg.flow.result_storage, cfg.output_dir, key)
    with console.stage("train") as stage:
        record = load_record(path, key, fingerprint, cfg.model_dir) if cfg.flow.cache_training else None
        if record is not None and not _model_still_there(record):
            console.line(f"cached model at {record.model_dir} is gone or changed: retraining")
            record = None
        cached = record is not None
        if record is None:
            record = train_task.with_options(**retry)(cfg, data, fingerprint, key)
            save_record(path, record)
        stage.note("reused the cached model: same data and training settings" if cached else "exported")
    return record.summary(), cached


def _refuse_secret_parameters(config: Any, config_path: str | None, overrides: list[str] | None) -> None:
    """Refuse `config`/`overrides` values holding credentials (a `ConfigError`: never retried).

    Prefect stored the parameters when it created this run, before this body runs: the stored copy
    is replaced by a redacted one first, so that the refused credentials do not stay in its database.
    """
    refusal = secret_parameters_error(config, overrides)
    if refusal is None:
        return
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    safe = {
        "config": redact_config(config),
        "config_path": config_path,
        "overrides": redact_overrides(overrides),
    }
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
        refusal = secret_parameters_error(parameters.get("config"), parameters.get("overrides"))
        if refusal is not None:
            raise refusal
        return super().serialize_parameters(parameters)


def _augmentation_flow(
    config: dict[str, Any] | None = None,
    config_path: str | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Train a VAE on the configured images and commit a synthetic Parquet dataset.

    Args:
        config: pipeline settings as nested sections (data, model, train, generate, ray, flow, ...);
            unknown keys are errors.
        config_path: a YAML file with the same sections (applied before `config`).
        overrides: dotted "key=value" overrides applied last.

    Returns:
        Summary: model dir and checksum, whether training came from the cache, quality figures,
        the dataset location, rows and per-class counts, stage timings.

    Raises:
        ConfigError: a bad config, or `config`/`overrides` holding credentials (Prefect stores the
            parameters: pass credentials by environment or credential files; a YAML file given as
            `config_path` may hold them, only its path is a parameter).
    """
    _refuse_secret_parameters(config, config_path, overrides)
    with console.mirrored(_api_log()):
        cfg = load_config(config_path, overrides, settings=config)  # strict: fails before any Ray work
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
        quality = evaluate_task(cfg, data, trained["model_dir"])
        generated = generate_task.with_options(**retry)(cfg, data, trained["model_dir"])
        checked_rows = validate_task(
            generated["dataset_dir"], generated["rows"], cfg.generate.storage_options
        )
        summary = {
            "model_dir": trained["model_dir"],
            "model_sha256": trained["sha256"],
            "training_cached": cached,
            "training_worker_nodes": trained.get("worker_nodes", []),
            "run_name": trained.get("run_name"),
            "run_dir": trained.get("run_dir"),
            "grid_path": trained["grid_path"],
            "final_epoch": trained["history"][-1] if trained["history"] else {},
            "quality": quality,
            **generated,
            "validated": checked_rows,
            "timings": dict(console.timings),
        }
        _publish_artifacts(cfg, summary, trained)
    return summary


augmentation_flow = _ParameterCheckedFlow(
    _augmentation_flow, name=FLOW_NAME, log_prints=False, persist_result=False
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


def _publish_artifacts(cfg: PipelineConfig, summary: dict[str, Any], trained: dict[str, Any]) -> None:
    history = trained["history"]
    rows = "\n".join(
        f"| {int(r['epoch'])} | {r['train_loss']:.3f} | {r.get('val_loss', float('nan')):.3f} "
        f"| {r['train_recon']:.3f} | {r['train_kl']:.3f} | {r['samples_per_s']:.0f} |"
        for r in history
    )
    quality = summary["quality"]
    quality_rows = "\n".join(
        f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in quality.items()
    )
    report = f"""# VAE augmentation run

**Dataset**: `{summary["dataset_dir"]}`: {summary["rows"]} rows in {len(summary.get("files", []))} files
(committed).
**Model**: `{summary["model_dir"]}` (sha256 `{summary["model_sha256"][:12]}`,
{"reused from the training cache" if summary["training_cached"] else "trained in this run"}).
**Data**: `{cfg.data.source}` ({trained["data_fingerprint"][:12]}).

## Quality (held-out)
| figure | value |
| --- | --- |
{quality_rows}

## Training
| epoch | train loss | held-out loss | recon | KL | samples/s |
| --- | --- | --- | --- | --- | --- |
{rows}

## Usefulness (does the synthetic set help a downstream classifier?)
{_usefulness_markdown(summary)}

## Samples and reconstructions
{_grid_markdown(trained["grid_path"])}

## Load it
```python
{stages.how_to_load(summary["dataset_dir"])}
```
"""
    create_markdown_artifact(key="augmentation-report", markdown=report, description="VAE augmentation run")
    create_table_artifact(
        key="class-counts",
        table=_class_table(summary),
        description="synthetic rows per class, label fidelity and curation acceptance",
    )


def _usefulness_markdown(summary: dict[str, Any]) -> str:
    from pipelines.generate.card import usefulness_section

    body = usefulness_section(summary.get("usefulness") or {"skipped": summary.get("usefulness_note")}, {})
    text = "\n".join(body[2:])  # without the card's own heading
    picture = summary.get("picture_path")
    if picture:
        text = text.replace("](usefulness.png)", f"]({_png_data_url(picture)})")
    return text


def _class_table(summary: dict[str, Any]) -> list[dict[str, Any]]:
    fidelity = (summary.get("usefulness") or {}).get("fidelity_per_class", {})
    curation = (summary.get("curation") or {}).get("per_class", {})
    table = []
    for name, rows in summary.get("per_class", {}).items():
        row: dict[str, Any] = {"class": str(name), "rows": int(rows)}
        if name in fidelity:
            row["label_fidelity"] = round(float(fidelity[name]), 4)
        if name in curation:
            row["acceptance_rate"] = round(float(curation[name]["acceptance_rate"]), 4)
        table.append(row)
    return table


__all__ = ["FLOW_NAME", "augmentation_flow"]
