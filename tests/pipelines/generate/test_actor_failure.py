"""Kill-and-resume of the generation fan-out (issue 11): one `ShardWriter` actor's process SIGKILLed
mid-run on a real local Ray. The fan-out must retry its shards on a replacement actor and commit exactly
the requested rows, without duplicates, in files byte-identical to a clean run with the same seed."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.generate import generate
from pipelines.readers import SyntheticManifest, open_dataset
from pipelines.storage import join
from tests.pipelines.generate.helpers import make_cfg
from tests.pipelines.raykill import Killed, actors_of, kill_one_actor_when

#: Many small shards: the job lasts seconds on 2 cores, so a kill after the first file lands mid-run.
ROWS, SHARD_ROWS = 4000, 20
ACTORS = 2
WRITER_CLASS = "ShardWriter"


def kill_a_writer_after_first_shard(output: Path, before: set[str], stop: threading.Event) -> Killed:
    """Start a thread that SIGKILLs one live writer actor of this job once a shard file exists.

    Args:
        output: the job's output folder (shards are looked for anywhere below it: versioned or not).
        before: ids of the writer actors that existed before the job (earlier jobs' actors).
        stop: set when the job is over; the thread then gives up.

    Returns:
        `Killed`, filled in by the thread.
    """
    return kill_one_actor_when(
        lambda: any(output.rglob("part-*.parquet")), WRITER_CLASS, before, stop, poll_s=0.01
    )


def _data_files(manifest: SyntheticManifest) -> dict[str, str]:
    """Manifest path -> sha256 of the bytes read back from the dataset."""
    fs, root = manifest.filesystem()
    return {
        f["path"]: hashlib.sha256(fs.cat_file(join(root, f["path"]))).hexdigest()
        for f in manifest.data["files"]
    }


@pytest.mark.slow
def test_killed_writer_commits_exact_identical_files(ray_session, cond_model, tmp_path: Path) -> None:
    settings = {"num_samples": ROWS, "shard_size": SHARD_ROWS, "batch_size": SHARD_ROWS, "num_actors": ACTORS}
    generate(make_cfg(str(tmp_path / "clean"), **settings), model_dir=cond_model, progress=False)
    clean = open_dataset(str(tmp_path / "clean"))

    before = set(actors_of(WRITER_CLASS))
    stop = threading.Event()
    out = tmp_path / "killed"
    killed = kill_a_writer_after_first_shard(out, before, stop)
    try:
        result = generate(make_cfg(str(out), **settings), model_dir=cond_model, progress=False)
    finally:
        stop.set()

    # The kill landed mid-job: the dead actor's shards were retried on one replacement actor.
    assert killed.pid is not None, "the job ended before a writer could be killed"
    started = actors_of(WRITER_CLASS).keys() - before
    assert len(started) == ACTORS + 1, started

    # Committed, with exactly the requested rows and no duplicate row or file.
    manifest = open_dataset(str(out))
    assert manifest.rows == result.rows == ROWS == sum(manifest.file_rows)
    paths = [f["path"] for f in manifest.data["files"]]
    assert len(paths) == len(set(paths)) == -(-ROWS // SHARD_ROWS)
    fs, root = manifest.filesystem()
    on_disk = {p[len(root) :].lstrip("/") for p in fs.find(root) if p.endswith(".parquet")}
    assert on_disk == set(paths)  # nothing left over by the killed actor
    ids = [
        i for p in paths for i in pq.read_table(join(root, p), filesystem=fs).column("sample_id").to_pylist()
    ]
    assert len(ids) == len(set(ids)) == ROWS

    # Byte-identical to the clean run, file by file (by manifest path), and as the manifest records.
    files = _data_files(manifest)
    assert files == _data_files(clean)
    assert files == {f["path"]: f["sha256"] for f in manifest.data["files"]}
