"""Conditional writes and the writer's lease, with real processes racing (local disk, S3 server)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.dataset_format import LEASE
from pipelines.errors import StorageError
from pipelines.generate.commit import open_fs
from pipelines.generate.conditional import read_tagged, write_if
from pipelines.generate.lease import LEASE_SECONDS, Lease, LeaseRecord

ROOT = Path(__file__).resolve().parents[3]

_RACER = """
import json, os, sys, time
from pipelines.generate.commit import open_fs
from pipelines.generate.conditional import write_if
url, opts, go = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
fs, path = open_fs(url, opts)
print("ready", flush=True)
while not os.path.exists(go):  # a barrier: every racer writes in the same instant
    time.sleep(0.001)
print(json.dumps(write_if(fs, path, sys.argv[4].encode())), flush=True)
"""


def _race(url: str, opts: dict, go: Path, n: int = 4) -> list[bool]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, url, json.dumps(opts), str(go), f"racer-{i}"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        for i in range(n)
    ]
    for p in procs:  # every interpreter has imported and opened the store
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    go.touch()
    return [json.loads(p.communicate(timeout=120)[0].strip().splitlines()[-1]) for p in procs]


@pytest.mark.parametrize("store", ["local", "s3"])
def test_create_if_absent_has_exactly_one_winner_among_processes(tmp_path, store, request):
    if store == "s3":
        s3 = request.getfixturevalue("s3")
        url, opts = f"s3://{s3.new_bucket()}/out/_SUCCESS", s3.storage_options()
    else:
        url, opts = str(tmp_path / "out" / "_SUCCESS"), {}
    wins = _race(url, opts, tmp_path / "go")
    assert wins.count(True) == 1, wins
    fs, path = open_fs(url, opts)
    assert fs.cat_file(path) == f"racer-{wins.index(True)}".encode()  # the winner's bytes, whole


@pytest.mark.parametrize("store", ["local", "s3"])
def test_compare_and_swap_refuses_a_stale_tag(tmp_path, store, request):
    if store == "s3":
        s3 = request.getfixturevalue("s3")
        url, opts = f"s3://{s3.new_bucket()}/out/_LATEST", s3.storage_options()
    else:
        url, opts = str(tmp_path / "_LATEST"), {}
    fs, path = open_fs(url, opts)
    assert write_if(fs, path, b"v1")
    _, tag = read_tagged(fs, path)
    assert write_if(fs, path, b"v2", tag)  # unchanged since read: swapped
    assert not write_if(fs, path, b"v3", tag)  # changed since: refused
    assert not write_if(fs, path, b"v4")  # exists: create-if-absent refused
    assert fs.cat_file(path) == b"v2"


def _record(pid: int, host: str, expires_in: float) -> bytes:
    return LeaseRecord(
        "someone", host, pid, "", "2026-01-01T00:00:00+00:00", time.time() + expires_in
    ).to_json()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_dead_local_holder_frees_the_lease_at_once(tmp_path):
    import logging

    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("pipelines.generate.lease")
    logger.addHandler(handler)
    (tmp_path / LEASE).write_bytes(_record(_dead_pid(), socket.gethostname(), LEASE_SECONDS))
    fs, root = open_fs(str(tmp_path))
    try:
        with Lease.acquire(fs, root, str(tmp_path)) as lease:
            assert lease.record.pid == os.getpid()
    finally:
        logger.removeHandler(handler)
    assert any("took over a stale lease" in m for m in seen), seen
    assert not (tmp_path / LEASE).exists()


def test_another_machines_lease_holds_until_it_expires(tmp_path):
    fs, root = open_fs(str(tmp_path))
    (tmp_path / LEASE).write_bytes(_record(1, "another-host", 60))
    with pytest.raises(
        StorageError, match=r"being written by another job \(pid 1 on another-host.*choose another"
    ):
        Lease.acquire(fs, root, str(tmp_path))
    (tmp_path / LEASE).write_bytes(_record(1, "another-host", -1))  # not renewed: expired
    with Lease.acquire(fs, root, str(tmp_path)) as lease:
        assert json.loads((tmp_path / LEASE).read_text())["owner"] == lease.record.owner


def test_a_holder_whose_lease_was_taken_does_not_commit(tmp_path):
    fs, root = open_fs(str(tmp_path))
    lease = Lease.acquire(fs, root, str(tmp_path))
    try:
        (tmp_path / LEASE).write_bytes(_record(1, "another-host", 60))  # as after a stall past the expiry
        with pytest.raises(
            StorageError, match="lost its lease .*taken by pid 1 on another-host.*nothing committed"
        ):
            lease.check()
    finally:
        lease.release()
    assert (tmp_path / LEASE).exists()  # the new holder's lease is left alone


def test_the_lease_is_renewed_while_held(tmp_path, monkeypatch):
    import pipelines.generate.lease as lease_mod

    monkeypatch.setattr(lease_mod, "RENEW_SECONDS", 0.05)
    fs, root = open_fs(str(tmp_path))
    with Lease.acquire(fs, root, str(tmp_path)):
        first = json.loads((tmp_path / LEASE).read_text())["expires_at"]
        time.sleep(0.5)
        assert json.loads((tmp_path / LEASE).read_text())["expires_at"] > first
