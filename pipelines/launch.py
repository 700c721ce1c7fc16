"""`vaeaug run`: check the job, start Prefect and Ray side by side, run the flow.

Start-up is most of a small job's wall time, so what can overlap does: Prefect's temporary server
(a subprocess: imports, database migrations) starts in a thread from the first moment, while this
thread imports torch, checks the job (`check_job`: a user error stops here, before Ray, the data or
any training) and starts the local Ray. This module imports nothing heavy itself, so the start-up
stage (and its ticking status line on a terminal) opens at once.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from pipelines.console import console, quiet_prefect_console
from pipelines.errors import PipelineError
from pipelines.redaction import refuse_secret_parameters

if TYPE_CHECKING:
    from pipelines.config import PipelineConfig


def _inferred_model(cfg: PipelineConfig, inferred: tuple[str, ...]) -> dict[str, Any] | None:
    """The flow's `model` parameter fixing what was inferred from the data (`{"channels": 1, ...}`),
    so that the flow does not infer it again; None when nothing was."""
    return {key: getattr(cfg.model, key) for key in inferred} or None


def _start_prefect(errors: list[BaseException]) -> None:
    """Thread body: Prefect's temporary server when no `PREFECT_API_URL` is set (else nothing)."""
    from pipelines.prefect_server import STARTUP_TIMEOUT_S, start_temporary_server, uses_temporary_server

    try:
        if not uses_temporary_server():
            return
        with console.stage("prefect", "temporary local server (set PREFECT_API_URL to use your own)") as st:
            try:
                st.note(start_temporary_server() or "")
            except RuntimeError as exc:
                from pipelines.storage import first_line  # fsspec: only on this error

                raise PipelineError(
                    f"Prefect's temporary server did not answer within {STARTUP_TIMEOUT_S} s "
                    f"({first_line(exc)}): start one with `prefect server start` and set "
                    "PREFECT_API_URL=http://127.0.0.1:4200/api"
                ) from None
    except BaseException as exc:  # handed to the main thread
        errors.append(exc)


def _start_ray(cfg: PipelineConfig) -> None:
    """The local Ray (or the connection to `ray.address`), as a console stage."""
    from pipelines.raycluster import ensure_ray

    with console.stage("ray") as stage:
        info = ensure_ray(cfg.ray)
        where = "local" if info.address is None else info.address
        stage.note(f"{where}: {info.num_cpus:.0f} CPUs, {info.num_gpus:.0f} GPUs, {info.num_nodes} node(s)")


def run_pipeline(config_path: str | None, overrides: list[str]) -> dict[str, Any]:
    """Check the job, start the services and run the flow; returns the flow's summary.

    Prefect's temporary server starts first, in a thread (it needs nothing from the job, and its
    database start-up is the longest wait); the checks, then Ray, run here meanwhile. A failed check
    ends the command at once (the server process is stopped at exit). Overrides holding credentials
    are refused before anything starts: they become flow parameters, which Prefect stores (the YAML
    file may hold them: only its path is a parameter).

    Raises:
        ConfigError, PipelineError: a problem with the job (found before any work where possible).
    """
    refuse_secret_parameters(overrides=overrides, where="overrides")
    errors: list[BaseException] = []
    prefect = threading.Thread(target=_start_prefect, args=(errors,), name="prefect-start", daemon=True)
    with console.stage("start-up", "checks, then Ray; Prefect's server meanwhile"):
        prefect.start()
        from pipelines.checks import check_job  # torch & co.: after the server's start
        from pipelines.config import load_config

        cfg = load_config(config_path, overrides)
        inferred = tuple(cfg.infer_from_data)
        checked = check_job(cfg)  # before Ray, data or training: a user error costs seconds
        if checked.shape_note:
            console.line(checked.shape_note)
        if not cfg.ray.submit_job:
            _start_ray(cfg)
        prefect.join()
        if errors:
            raise errors[0]
    from pipelines.flow import augmentation_flow

    quiet_prefect_console()  # after Prefect configured its logging
    return augmentation_flow(
        config_path=config_path, overrides=list(overrides), model=_inferred_model(cfg, inferred)
    )


__all__ = ["run_pipeline"]
