"""Exactly-once commits with real processes: concurrent writers on one output (local disk and the S3
test server), a polling reader that must never see mixed data, and SIGKILL during an overwrite."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import fsspec
import pytest

from pipelines.dataset_format import LATEST, LEASE
from pipelines.errors import DataError, StorageError
from pipelines.generate.commit import open_fs
from pipelines.readers import open_dataset
from tests.pipelines.generate.helpers import run_local, snapshot

ROOT = Path(__file__).resolve().parents[3]
#: Long enough (a few seconds) that the two jobs overlap.
BIG = {"num_samples": 1200, "shard_size": 60, "batch_size": 60}
REFUSED = r"being written by another job|committed dataset already exists"

pytestmark = pytest.mark.slow


def _start(output: str, model_dir: str, storage_options: dict | None = None, **gen) -> subprocess.Popen:
    args = {"output": output, "model_dir": model_dir, "generate": {**BIG, **gen}}
    if storage_options:
        args["storage_options"] = storage_options
    return subprocess.Popen(
        [sys.executable, "-m", "tests.pipelines.generate.writer_proc", json.dumps(args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def _outcome(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=300)
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert lines and "ok" in lines[-1], f"no result (exit {proc.returncode}): {err[-2000:]}"
    assert proc.returncode == (0 if lines[-1]["ok"] else 2)
    return lines[-1]


class PollingReader(threading.Thread):
    """Opens the output again and again, checking every file's sha256 against the manifest."""

    def __init__(self, url: str, storage_options: dict | None = None):
        super().__init__(daemon=True)
        self.url, self.opts = url, storage_options or {}
        self.stop = threading.Event()
        self.seen: list[tuple[str, int]] = []  # (job id, rows) of every complete read
        self.bad: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                m = open_dataset(self.url, self.opts, verify="sha256")
                self.seen.append((m.provenance["job_id"], m.rows))
            except DataError as exc:  # nothing committed yet is fine; a mismatch is not
                if "no synthetic dataset" not in str(exc) and "incomplete" not in str(exc):
                    self.bad.append(str(exc))
            except FileNotFoundError as exc:  # a version deleted by an overwrite while being read
                self.seen.append(("gone", 0)) if "v" in str(exc) else self.bad.append(str(exc))
            time.sleep(0.05)


def _race(url: str, model_dir: str, opts: dict | None, if_exists: str) -> tuple[list[dict], PollingReader]:
    reader = PollingReader(url, opts)
    reader.start()
    procs = [_start(url, model_dir, opts, seed=seed, if_exists=if_exists) for seed in (1, 2)]
    outcomes = [_outcome(p) for p in procs]
    reader.stop.set()
    reader.join()
    return outcomes, reader


@pytest.mark.parametrize("store", ["local", "s3"])
def test_two_writers_one_output_exactly_one_commit(tmp_path, cond_model, store, request):
    if store == "s3":
        s3 = request.getfixturevalue("s3")
        url, opts = f"s3://{s3.new_bucket()}/synthetic", s3.storage_options()
    else:
        url, opts = str(tmp_path / "ds"), None
    outcomes, reader = _race(url, cond_model, opts, "error")
    winners = [o for o in outcomes if o["ok"]]
    losers = [o for o in outcomes if not o["ok"]]
    assert len(winners) == 1 and len(losers) == 1, outcomes
    assert "\n" not in losers[0]["error"]
    assert __import__("re").search(REFUSED, losers[0]["error"]), losers[0]["error"]
    final = open_dataset(url, opts, verify="sha256")
    assert final.rows == winners[0]["rows"] == BIG["num_samples"]
    assert reader.bad == []
    assert {job for job, _ in reader.seen} <= {final.provenance["job_id"]}  # only ever the winner's data
    fs, root = open_fs(url, opts)
    assert not fs.exists(f"{root}/{LEASE}")  # released


def test_two_overwrites_never_mix_and_the_loser_is_refused_or_lands_whole(tmp_path, cond_model):
    url = str(tmp_path / "ds")
    run_local(tmp_path / "ds", cond_model, num_samples=50)  # an existing dataset to overwrite
    outcomes, reader = _race(url, cond_model, None, "overwrite")
    assert any(o["ok"] for o in outcomes)
    for o in outcomes:
        assert o["ok"] or "being written by another job" in o["error"], o
    assert reader.bad == []
    final = open_dataset(url, verify="sha256")
    assert final.rows == BIG["num_samples"]
    versions = sorted(p.name for p in (tmp_path / "ds").iterdir())
    assert versions == [LATEST, Path(final.url).name]  # the replaced data is gone, nothing else is left


def _wait_for_shards(data_dir: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if data_dir.is_dir() and any(data_dir.glob("*.parquet")):
            return
        if proc.poll() is not None:
            pytest.fail(f"the writer ended before it could be killed: {proc.communicate()}")
        time.sleep(0.02)
    pytest.fail("no shard appeared")


def test_sigkill_during_overwrite_keeps_the_old_version_and_the_next_run_recovers(tmp_path, cond_model):
    out = tmp_path / "ds"
    run_local(out, cond_model, num_samples=50)
    before = snapshot(out)
    old = open_dataset(str(out), verify="sha256")
    proc = _start(str(out), cond_model, if_exists="overwrite", num_samples=20000)
    _wait_for_shards(out / "v1" / "data", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / LEASE).exists()  # the dead job's lease
    after = {k: v for k, v in snapshot(out).items() if not k.startswith(("v1/", LEASE))}
    assert after == before  # the old dataset is untouched...
    reopened = open_dataset(str(out), verify="sha256")  # ...and still what readers get
    assert (reopened.url, reopened.rows, reopened.data) == (old.url, 50, old.data)
    # The next run takes the dead job's lease over at once (same machine, process gone), removes its
    # uncommitted v1, and swaps in its own version.
    res = run_local(out, cond_model, num_samples=30, if_exists="overwrite")
    assert res.version == "v2" and sorted(p.name for p in out.iterdir()) == [LATEST, "v2"]
    assert open_dataset(str(out), verify="sha256").rows == 30


def test_a_live_lease_refuses_a_second_job_before_any_work(tmp_path, cond_model):
    from pipelines.generate.lease import Lease

    out = tmp_path / "ds"
    fs, root = open_fs(str(out))
    fs.makedirs(root, exist_ok=True)
    with Lease.acquire(fs, root, str(out)):
        with pytest.raises(StorageError, match=r"being written by another job \(pid \d+ on .*wait for it"):
            run_local(out, cond_model, num_samples=20, if_exists="new_version")
        assert sorted(p.name for p in out.iterdir()) == [LEASE]  # nothing written
    assert not (out / LEASE).exists()
    assert run_local(out, cond_model, num_samples=20, if_exists="new_version").version == "v1"


def test_readers_check_sizes_always_and_checksums_on_request(tmp_path, cond_model):
    out = tmp_path / "ds"
    run_local(out, cond_model, num_samples=40)
    shard = sorted((out / "data").iterdir())[1]
    blob = bytearray(shard.read_bytes())
    blob[100] ^= 0xFF  # same size, other bytes
    shard.write_bytes(bytes(blob))
    assert open_dataset(str(out)).rows == 40  # a size check cannot see it...
    with pytest.raises(DataError, match=rf"{shard.name} .* does not match its manifest's sha256: .*re-run"):
        open_dataset(str(out), verify="sha256")  # ...the checksum does
    shard.write_bytes(bytes(blob[:-10]))  # truncated
    with pytest.raises(DataError, match=rf"{shard.name} .* has \d+ bytes, its manifest says \d+"):
        open_dataset(str(out))
    shard.unlink()
    with pytest.raises(DataError, match=rf"{shard.name} .* is missing"):
        open_dataset(str(out))


def test_memory_store_pointer_and_marker_are_conditional():
    from pipelines.generate.conditional import read_tagged, write_if

    fs = fsspec.filesystem("memory")
    path = "/vaeaug-cond/ptr"
    try:
        assert write_if(fs, path, b"a") and not write_if(fs, path, b"b")
        _, tag = read_tagged(fs, path)
        assert write_if(fs, path, b"c", tag) and not write_if(fs, path, b"d", tag)
        assert fs.cat_file(path) == b"c"
    finally:
        fs.rm("/vaeaug-cond", recursive=True)
