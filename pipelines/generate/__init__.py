"""Fan-out decoder sampling to committed Parquet datasets.

>>> from pipelines.generate import generate
>>> result = generate(cfg)  # doctest: +SKIP  (cfg: a PipelineConfig; writes cfg.dataset_dir)

Modules by role: `plan` (job -> shard specs), `shard` (one shard -> one Parquet file), `png`
(batch PNG encoder), `schema` (Arrow schema + Hugging Face metadata), `actors` (the Ray actor),
`commit` (output checks, manifest, `_SUCCESS`), `card` (README.md), `job` (the driver).
"""

from __future__ import annotations

import importlib
from typing import Any

# Loaded on first use: the readers import `pipelines.generate.commit` (the dataset format) and must
# not pull in the driver, torch and torchvision with it (a DataLoader worker imports the readers).
_LAZY = {
    "GenerateResult": "pipelines.generate.job",
    "generate": "pipelines.generate.job",
    "JobPlan": "pipelines.generate.plan",
    "ShardSpec": "pipelines.generate.plan",
    "make_plan": "pipelines.generate.plan",
    "write_shard": "pipelines.generate.shard",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["GenerateResult", "JobPlan", "ShardSpec", "generate", "make_plan", "write_shard"]
