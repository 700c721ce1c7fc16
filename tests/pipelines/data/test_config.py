"""`DataConfig`: round trip through its dict form, and one-line errors naming the bad key."""

from __future__ import annotations

import json

import pytest

from pipelines.data import DataConfig
from vae.config import ConfigError


def test_config_round_trip_and_errors():
    cfg = DataConfig(source="folder", path="s3://b/x", limit=5, storage_options={"anon": True})
    assert DataConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert DataConfig(source="mnist").root == "./data"
    with pytest.raises(ConfigError, match=r"data.source='foo' is unknown: use one of \['digits'"):
        DataConfig(source="foo")
    with pytest.raises(
        ConfigError, match=r"unknown config key\(s\) \['data.pth'\]: valid keys under 'data' .*'path'"
    ):
        DataConfig.from_dict({"source": "folder", "pth": "x"})
    with pytest.raises(ConfigError, match="data.path is required for data.source='parquet'"):
        DataConfig(source="parquet")
    with pytest.raises(ConfigError, match="data.split='val'"):
        DataConfig(split="val")
    with pytest.raises(ConfigError, match="data.limit=0"):
        DataConfig(limit=0)
    with pytest.raises(ConfigError, match="local folder only"):
        DataConfig(source="mnist", path="s3://b/data")
