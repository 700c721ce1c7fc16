"""Fan-out decoder sampling to committed Parquet datasets.

>>> from pipelines.generate import generate
>>> result = generate(cfg)  # doctest: +SKIP  (cfg: a PipelineConfig; writes cfg.dataset_dir)

Modules by role: `plan` (job -> shard specs), `shard` (one shard -> one Parquet file), `png`
(batch PNG encoder), `schema` (Arrow schema + Hugging Face metadata), `actors` (the Ray actor),
`commit` (output checks, manifest, `_SUCCESS`), `card` (README.md), `job` (the driver).
"""

from pipelines.generate.job import GenerateResult, generate
from pipelines.generate.plan import JobPlan, ShardSpec, make_plan
from pipelines.generate.shard import write_shard

__all__ = ["GenerateResult", "JobPlan", "ShardSpec", "generate", "make_plan", "write_shard"]
