"""Serving the augmentation flow on a schedule (cron or interval) with Prefect."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from pipelines.config import load_config
from pipelines.errors import PipelineError
from pipelines.redaction import refuse_secret_parameters


def deployment_parameters(config_path: str | None, overrides: list[str]) -> dict[str, Any]:
    """Flow parameters for a deployment; the config is validated now, not at the first scheduled run.

    Args:
        config_path: YAML config (stored as an absolute path: scheduled runs start elsewhere).
        overrides: dotted overrides.

    Returns:
        The `augmentation_flow` parameters.

    Raises:
        ConfigError: a bad config, or overrides holding credentials (Prefect stores a deployment's
            parameters and shows them in its UI; a YAML file may hold them: only its path is stored).
    """
    refuse_secret_parameters(overrides=overrides, where="deployment parameters (overrides)")
    load_config(config_path, overrides)  # raises ConfigError on a bad config
    return {
        "config_path": str(Path(config_path).resolve()) if config_path else None,
        "overrides": list(overrides),
    }


def build_deployment(
    name: str,
    cron: str | None = None,
    interval_s: float | None = None,
    timezone: str = "UTC",
    parameters: dict[str, Any] | None = None,
) -> Any:
    """A `RunnerDeployment` of the augmentation flow with one schedule.

    Args:
        name: deployment name (the flow is "vae-augmentation").
        cron: a cron string such as "0 3 * * *".
        interval_s: alternatively, run every N seconds.
        timezone: the cron's time zone.
        parameters: flow parameters (see `deployment_parameters`).

    Returns:
        The deployment, ready for `prefect.serve(...)` or `.apply()`.
    """
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule

    from pipelines.flow import augmentation_flow

    if (cron is None) == (interval_s is None):
        raise PipelineError("give exactly one of --cron 'MIN HOUR DOM MON DOW' or --interval SECONDS")
    if cron is not None:
        try:
            schedule = CronSchedule(cron=cron, timezone=timezone)
        except ValueError:
            raise PipelineError(
                f"invalid cron {cron!r}: use 5 fields 'MIN HOUR DAY MONTH WEEKDAY', e.g. '0 3 * * *'"
            ) from None
    else:
        if interval_s <= 0:
            raise PipelineError(f"--interval {interval_s}: must be > 0 seconds")
        schedule = IntervalSchedule(interval=timedelta(seconds=interval_s))
    return augmentation_flow.to_deployment(
        name=name,
        schedule=schedule,
        parameters=parameters or {},
        description="Train a VAE on the configured images and commit a synthetic Parquet dataset.",
        tags=["vaeaug"],
    )


def serve(deployment: Any) -> None:
    """Register the deployment and run its scheduled flow runs in this process until interrupted."""
    from prefect import serve as prefect_serve

    prefect_serve(deployment)
