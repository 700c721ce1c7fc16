"""What a training checkpoint holds, and reading it back.

A checkpoint is a local directory (Ray Train uploads it to `storage_path`):

    config.json, model.safetensors, environment.json   the model, in `vae.io`'s self-describing format
    optimizer.pt      the optimizer's state dict (torch.save; loaded with weights_only=True)
    rng.pt            torch CPU/CUDA, numpy and Python RNG states of the saving rank (weights_only too)
    state.json        epoch, metrics history up to that epoch, and the pipeline config (redacted)

Nothing in it needs unpickling of arbitrary objects: tensors and plain containers only. Nothing in it
holds credentials either: checkpoints are uploaded to `train.storage_path`, often a shared bucket,
so the config is stored through `pipelines.redaction.redact_config`; resuming reads the weights, the
optimizer and RNG states and the history, never the stored config.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.redaction import redact_config
from vae.io import load_model, save_model
from vae.model import VAE
from vae.training import unwrap

OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.pt"
STATE_FILE = "state.json"
CHECKPOINT_VERSION = 1


@dataclass
class TrainState:
    """A checkpoint read back.

    Args:
        model: the VAE with the checkpointed weights (on CPU).
        epoch: the last completed epoch (1-based).
        history: one metrics row per completed epoch (epochs 1..`epoch`).
        config: the pipeline config (`PipelineConfig.to_dict()`) of the run that wrote it, with
            secrets redacted (a record of the run, not a config to run from).
        optimizer: the optimizer's state dict.
        rng: the RNG states (see `capture_rng`), or None.
    """

    model: VAE
    epoch: int
    history: list[dict[str, float]]
    config: dict[str, Any]
    optimizer: dict[str, Any] | None = None
    rng: dict[str, Any] | None = field(default=None, repr=False)


def capture_rng() -> dict[str, Any]:
    """The torch (CPU and CUDA), numpy and Python RNG states, as tensors and plain containers."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Set the RNGs to a state from `capture_rng` (CUDA states only where the devices match)."""
    torch.set_rng_state(state["torch"])
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    random.setstate(_to_tuples(state["python"]))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _to_lists(value: Any) -> Any:
    return [_to_lists(v) for v in value] if isinstance(value, tuple | list) else value


def _to_tuples(value: Any) -> Any:
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value


def save_checkpoint(
    directory: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    history: list[dict[str, float]],
    config: dict[str, Any],
) -> Path:
    """Write a checkpoint into a local directory.

    Args:
        directory: a local directory (created if missing); its files are replaced.
        model: the VAE, possibly DDP-wrapped.
        optimizer: its optimizer.
        epoch: the last completed epoch (1-based).
        history: metrics rows of epochs 1..`epoch`.
        config: `PipelineConfig.to_dict()` of the run (stored redacted, whatever the caller passes).

    Returns:
        The directory as a `Path`.
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    save_model(unwrap(model), str(root), extra={"checkpoint_epoch": epoch})
    torch.save(optimizer.state_dict(), root / OPTIMIZER_FILE)
    torch.save(capture_rng(), root / RNG_FILE)
    state = {
        "version": CHECKPOINT_VERSION,
        "epoch": epoch,
        "history": history,
        "config": redact_config(config),
    }
    (root / STATE_FILE).write_text(json.dumps(state, indent=1))  # last: a complete checkpoint has it
    return root


def load_checkpoint(directory: str | Path, with_optimizer: bool = True) -> TrainState:
    """Read a checkpoint written by `save_checkpoint`.

    Args:
        directory: the local checkpoint directory (e.g. from `Checkpoint.as_directory()`).
        with_optimizer: also read the optimizer and RNG states (not needed to export the model).

    Returns:
        The `TrainState` (model on CPU, in eval mode).

    Raises:
        FileNotFoundError: the directory is not a complete checkpoint.
    """
    root = Path(directory)
    state_path = root / STATE_FILE
    if not state_path.is_file():
        raise FileNotFoundError(f"'{root}' is not a complete checkpoint ({STATE_FILE} missing)")
    state = json.loads(state_path.read_text())
    model = load_model(str(root))
    optimizer = rng = None
    if with_optimizer:
        optimizer = torch.load(root / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
        rng = torch.load(root / RNG_FILE, map_location="cpu", weights_only=True)
    return TrainState(
        model=model,
        epoch=int(state["epoch"]),
        history=list(state["history"]),
        config=state["config"],
        optimizer=optimizer,
        rng=rng,
    )
