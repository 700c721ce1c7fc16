"""Prefect's temporary server, started on purpose with time to spare when no API URL is set."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipelines.prefect_server import start_temporary_server, uses_temporary_server

# A fresh interpreter, a fresh Prefect home and no API URL: as a new user's first `vaeaug run`.
_START = """
import os, urllib.request
from pipelines.prefect_server import start_temporary_server, uses_temporary_server
assert uses_temporary_server()
url = start_temporary_server(timeout_s=240)
print(url, os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"])
print(urllib.request.urlopen(url + "/health", timeout=30).read().decode())
"""


@pytest.mark.usefixtures("prefect_harness")
def test_with_an_api_url_nothing_is_started(monkeypatch):
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # restored after: the call sets it
    assert not uses_temporary_server()
    assert start_temporary_server() is None


@pytest.mark.slow
def test_without_an_api_url_the_server_answers_with_telemetry_off(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    done = subprocess.run(
        [sys.executable, "-c", _START], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    url_line, health = done.stdout.strip().splitlines()[-2:]
    url, analytics = url_line.split()
    assert url.startswith("http://127.0.0.1:") and url.endswith("/api") and analytics == "false"
    assert health == "true"
