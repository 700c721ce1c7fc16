"""Fan-out decoder sampling to committed Parquet datasets.

>>> from pipelines.generate import generate
>>> result = generate(cfg)  # doctest: +SKIP  (cfg: a PipelineConfig; writes cfg.dataset_dir)

Modules by role: `plan` (the request -> shard specs), `shard` (one shard -> one Parquet file), `png`
(batch PNG encoder), `schema` (Arrow schema + Hugging Face metadata), `actors` (the Ray actor),
`fanout` (shards to actors), `commit` (output checks, manifest, `_SUCCESS`), `card` (README.md),
`driver` (the generation driver). The file layout is `pipelines.dataset_format`'s.
"""

from __future__ import annotations

from pipelines.lazy import lazy_exports

# Loaded on first use: importing one submodule (`commit`, `schema`...) must not pull in the driver,
# torch and torchvision with it.
_LAZY = {
    "GenerateResult": "pipelines.generate.driver",
    "generate": "pipelines.generate.driver",
    "GenerationPlan": "pipelines.generate.plan",
    "ShardSpec": "pipelines.generate.plan",
    "make_plan": "pipelines.generate.plan",
    "write_shard": "pipelines.generate.shard",
}


__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = ["GenerateResult", "GenerationPlan", "ShardSpec", "generate", "make_plan", "write_shard"]
