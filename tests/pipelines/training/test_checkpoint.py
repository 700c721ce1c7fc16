"""Checkpoints store no credentials, and a run still resumes from them."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pipelines.config import load_config
from pipelines.training.checkpoint import STATE_FILE, load_checkpoint, save_checkpoint
from vae.config import VAEConfig
from vae.model import VAE
from vae.training import make_optimizer


def test_checkpoint_stores_the_config_redacted_and_loads(tmp_path: Path) -> None:
    key, secret = "AKIACHECKPOINTPLANTED", "checkpoint/planted+secret"
    cfg = load_config(
        None,
        [
            f"data.storage_options={{key: {key}, secret: {secret}, endpoint_url: 'http://127.0.0.1:9000'}}",
            f"train.storage_path=s3://{key}:{secret}@bucket/runs",
        ],
    )
    torch.manual_seed(0)
    model = VAE(VAEConfig(hidden_channels=(8,), latent_dim=4))
    save_checkpoint(tmp_path, model, make_optimizer(model, 1e-3), 3, [{"epoch": 1.0}], cfg.to_dict())

    for path in tmp_path.iterdir():
        blob = path.read_bytes()
        assert key.encode() not in blob and secret.encode() not in blob, path.name
    stored = json.loads((tmp_path / STATE_FILE).read_text())["config"]
    assert stored["data"]["storage_options"] == {
        "key": "<redacted>",
        "secret": "<redacted>",
        "endpoint_url": "http://127.0.0.1:9000",
    }
    assert stored["train"]["storage_path"] == "s3://bucket/runs"
    state = load_checkpoint(tmp_path)  # what a resume reads: weights, optimizer, RNG, history
    assert state.epoch == 3 and state.optimizer is not None and state.rng is not None
    for name, tensor in model.state_dict().items():
        assert torch.equal(state.model.state_dict()[name], tensor)
