"""The whole flow on a two-node `ray.cluster_utils.Cluster`.

It runs in a subprocess: a process holds one Ray connection, and the session's local Ray is another.
The subprocess reports to this session's Prefect test server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.mark.slow
def test_flow_runs_across_two_nodes(tmp_path):
    from prefect.settings import PREFECT_API_URL

    script = textwrap.dedent(
        f"""
        import json, ray
        from ray.cluster_utils import Cluster
        cluster = Cluster(initialize_head=True, connect=True, head_node_args={{"num_cpus": 1}})
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        from pipelines.flow import augmentation_flow
        from pipelines.readers import open_dataset
        summary = augmentation_flow(**{{
            "model": {{"hidden_channels": [16, 32], "latent_dim": 8}},
            "report": {{"enabled": False}},
            "train": {{"epochs": 1, "min_steps": 0, "batch_size": 64, "num_workers": 2, "cpus_per_worker": 1,
                       "storage_path": {str(tmp_path / "runs")!r}}},
            "generate": {{"num_samples": 400, "shard_size": 100, "num_actors": 2}},
            "flow": {{"retries": 0, "result_storage": {str(tmp_path / "results")!r}}},
            "output_dir": {str(tmp_path / "job")!r},
        }})
        nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
        rows = open_dataset(summary["dataset_dir"]).rows
        print("RESULT", json.dumps({{"nodes": nodes, "workers": summary["training_worker_nodes"],
                                    "rows": rows}}))
        ray.shutdown()
        cluster.shutdown()
        """
    )
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, (proc.stdout[-3000:], proc.stderr[-3000:])
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert len(result["nodes"]) == 2
    assert set(result["workers"]) == set(result["nodes"])  # one training worker on each node
    assert result["rows"] == 400
