"""Prefect's temporary server, started on purpose and waited for.

When `PREFECT_API_URL` is unset, Prefect starts a temporary API server on the first API call and
gives it 20 s (`PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS`): a cold first run on a busy
machine (bytecode, database migrations) can miss that and fail. Starting the same server here, with
time to spare, in a thread while Ray starts, makes the first run succeed and costs no extra wall
time; Prefect's own calls then find it running (it is a per-process singleton).

Prefect stops the server at exit, but nothing stops it when the run is killed (SIGKILL, the OOM
killer): `pipelines.watchdog` does, started before the server so that the server carries its mark.
"""

from __future__ import annotations

import os

#: Seconds to wait for the temporary server: generous, it only matters on a cold, busy machine.
STARTUP_TIMEOUT_S = 300


def uses_temporary_server() -> bool:
    """Whether Prefect would start its temporary server (no API URL configured)."""
    from prefect.settings import get_current_settings

    return not get_current_settings().api.url


def start_temporary_server(timeout_s: int = STARTUP_TIMEOUT_S) -> str | None:
    """Start Prefect's temporary server and wait until it answers.

    Its telemetry is turned off (unless the user set `PREFECT_SERVER_ANALYTICS_ENABLED`): the
    heartbeat logs SQLite "database is locked" tracebacks on a busy machine and phones home. The
    watchdog ends it should this process die without running its exit handlers.

    Args:
        timeout_s: how long to wait for it to answer.

    Returns:
        The server's API URL, or None when `PREFECT_API_URL` points at a server already.

    Raises:
        RuntimeError: it did not answer within `timeout_s` (Prefect's message).
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # read by the server process
    if not uses_temporary_server():
        return None
    from prefect.server.api.server import SubprocessASGIServer

    from pipelines.watchdog import start_watchdog

    start_watchdog()  # before the server starts: it must inherit the run's mark
    server = SubprocessASGIServer()  # the instance Prefect's clients use when no API URL is set
    server.start(timeout=timeout_s)
    return server.api_url


__all__ = ["STARTUP_TIMEOUT_S", "start_temporary_server", "uses_temporary_server"]
