"""`generate.seed=per_run`: a seed derived from the run's time, recorded in the provenance."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.config import load_config
from pipelines.generate import generate
from pipelines.generate.plan import resolve_seed
from tests.pipelines.generate.helpers import make_cfg
from vae.config import ConfigError

NIGHT = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)


def _run(out: Path, model: str, run_time: datetime | None, **gen):
    cfg = make_cfg(str(out), **gen)
    return generate(cfg, model_dir=model, progress=False, use_ray=False, run_time=run_time)


def _shards(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "data").iterdir())}


def test_resolve_seed_is_a_function_of_the_instant():
    seed, source = resolve_seed("per_run", NIGHT)
    assert source == "per_run from run time 2026-11-22T03:00:00+00:00"
    assert 0 <= seed < 2**53 and resolve_seed("per_run", NIGHT)[0] == seed
    same_instant = [NIGHT.astimezone(timezone(timedelta(hours=-5))), NIGHT.replace(tzinfo=None)]  # naive: UTC
    assert {resolve_seed("per_run", t)[0] for t in same_instant} == {seed}
    assert resolve_seed("per_run", NIGHT + timedelta(days=1))[0] != seed
    assert resolve_seed("per_run", NIGHT + timedelta(seconds=1))[0] != seed
    assert resolve_seed(7, NIGHT) == (7, "fixed")
    now_seed, now_source = resolve_seed("per_run", None)
    assert now_source.startswith("per_run from start time ") and now_seed != seed


@pytest.mark.parametrize("bad", ["nightly", -1])
def test_bad_seed_settings_name_the_fix(bad):
    with pytest.raises(ConfigError, match=r"generate.seed=.*must be an int >= 0, or per_run"):
        load_config(None, [f"generate.seed={bad}"])
    assert load_config(None, ["generate.seed=per_run"]).generate.seed == "per_run"


def test_per_run_seed_changes_the_bytes_between_runs_only(tmp_path, cond_model):
    night1 = _run(tmp_path / "a", cond_model, NIGHT, seed="per_run")
    retry = _run(tmp_path / "b", cond_model, NIGHT, seed="per_run")  # a retry of the same scheduled run
    night2 = _run(tmp_path / "c", cond_model, NIGHT + timedelta(days=1), seed="per_run")
    assert _shards(tmp_path / "a") == _shards(tmp_path / "b")
    assert set(_shards(tmp_path / "a").values()).isdisjoint(_shards(tmp_path / "c").values())
    expected = resolve_seed("per_run", NIGHT)
    assert (night1.seed, night1.seed_source) == (retry.seed, retry.seed_source) == expected
    assert night2.seed != night1.seed
    prov = json.loads((tmp_path / "a" / "manifest.json").read_text())["provenance"]
    assert (prov["seed"], prov["seed_source"]) == expected
    assert prov["generate"]["seed"] == prov["config"]["generate"]["seed"] == expected[0]
    first = pq.read_schema(tmp_path / "a" / "data" / "part-00000-of-00003.parquet")
    assert json.loads(first.metadata[b"vaeaug"])["seed"] == expected[0]  # what the shards were seeded with


def test_a_fixed_seed_ignores_the_run_time(tmp_path, cond_model):
    a = _run(tmp_path / "a", cond_model, NIGHT, seed=3)
    b = _run(tmp_path / "b", cond_model, NIGHT + timedelta(days=1), seed=3)
    c = _run(tmp_path / "c", cond_model, None, seed=3)
    assert _shards(tmp_path / "a") == _shards(tmp_path / "b") == _shards(tmp_path / "c")
    assert (a.seed, a.seed_source) == (b.seed, b.seed_source) == (c.seed, c.seed_source) == (3, "fixed")
