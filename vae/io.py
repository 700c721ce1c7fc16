"""Self-describing save/load: `config.json` + `model.safetensors` + `environment.json`.

Loading never unpickles: weights are safetensors and the config is JSON. Paths may be local or any
fsspec URL (s3://, gs://, memory://).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import fsspec
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from vae.config import ConfigError, VAEConfig
from vae.model import VAE

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ENV_FILE = "environment.json"
#: Buffers of a model with `latent_prior="fitted"`: mean (G, D) and Cholesky factor (G, D, D).
_PRIOR_BUFFERS = ("prior_loc", "prior_scale_tril")


class ModelFileError(ConfigError):
    """A saved model is missing, incomplete or corrupt; the message names the file.

    A `ConfigError` (so a `ValueError` too): a user error, reported in one line and never retried.
    """


@dataclass
class SavedModel:
    """Where a model was written and the sha256 of its weights (its identity in provenance)."""

    path: str
    sha256: str


def environment() -> dict[str, str]:
    """Versions that produced a model (recorded next to it)."""
    from importlib import metadata

    try:
        pkg = metadata.version("vaeaug")
    except metadata.PackageNotFoundError:
        pkg = "unknown"
    return {
        "vaeaug": pkg,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "saved_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _join(path: str, name: str) -> str:
    return path.rstrip("/") + "/" + name


def save_model(
    model: VAE, path: str, extra: dict[str, Any] | None = None, storage_options: dict | None = None
) -> SavedModel:
    """Write the model so that `load_model(path)` rebuilds it exactly.

    Args:
        model: the VAE (unwrapped).
        path: a directory, local or fsspec URL; created if missing, files in it are replaced.
        extra: JSON-serialisable metadata stored under "extra" in config.json (e.g. class names).
        storage_options: fsspec options for remote paths.

    Returns:
        `SavedModel` with the path and the weights' sha256.
    """
    fs, root = fsspec.core.url_to_fs(path, **(storage_options or {}))
    fs.makedirs(root, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    blob = st_save(state, metadata={"format_version": str(FORMAT_VERSION)})
    digest = hashlib.sha256(blob).hexdigest()
    config = {
        "format_version": FORMAT_VERSION,
        "model": model.cfg.to_dict(),
        "weights_sha256": digest,
        "extra": extra or {},
    }
    # Weights first, config last: a directory with a config.json is complete.
    fs.pipe_file(_join(root, WEIGHTS_FILE), blob)
    fs.pipe_file(_join(root, ENV_FILE), json.dumps(environment(), indent=2).encode())
    fs.pipe_file(_join(root, CONFIG_FILE), json.dumps(config, indent=2).encode())
    return SavedModel(path=path, sha256=digest)


def read_model_config(path: str, storage_options: dict | None = None) -> dict[str, Any]:
    """The parsed config.json of a saved model (raises `ModelFileError` if missing or invalid)."""
    fs, root = fsspec.core.url_to_fs(path, **(storage_options or {}))
    cfg_path = _join(root, CONFIG_FILE)
    if not fs.exists(cfg_path):
        raise ModelFileError(
            f"no saved model at '{path}' ({CONFIG_FILE} missing): train one first or fix the model path"
        )
    try:
        data = json.loads(fs.cat_file(cfg_path))
        version = data.get("format_version") if isinstance(data, dict) else None
        if version is not None and version != FORMAT_VERSION:
            raise ModelFileError(
                f"model '{path}' has format_version {version}, this version reads "
                f"{FORMAT_VERSION}: re-export it with a matching vaeaug"
            )
        VAEConfig.from_dict(data["model"])
        if not isinstance(data["weights_sha256"], str):
            raise TypeError(f"weights_sha256 must be a hex string, got {data['weights_sha256']!r}")
    except (json.JSONDecodeError, KeyError, TypeError, ConfigError) as exc:
        raise ModelFileError(
            f"corrupt model config '{_join(path, CONFIG_FILE)}': {exc}; re-save the model"
        ) from None
    if data.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"corrupt model config '{_join(path, CONFIG_FILE)}': no format_version; re-save the model"
        )
    return data


def load_model(
    path: str, map_location: str | torch.device = "cpu", storage_options: dict | None = None
) -> VAE:
    """Rebuild a model saved by `save_model`, in eval mode.

    Args:
        path: the model directory (local or fsspec URL).
        map_location: device for the weights.
        storage_options: fsspec options for remote paths.

    Returns:
        The VAE with its weights loaded.

    Raises:
        ModelFileError: missing files, checksum mismatch, or weights that do not fit the config.
    """
    data = read_model_config(path, storage_options)
    fs, root = fsspec.core.url_to_fs(path, **(storage_options or {}))
    weights = _join(root, WEIGHTS_FILE)
    if not fs.exists(weights):
        raise ModelFileError(f"model '{path}' has no {WEIGHTS_FILE}: the save was interrupted; re-save it")
    blob = fs.cat_file(weights)
    if hashlib.sha256(blob).hexdigest() != data["weights_sha256"]:
        raise ModelFileError(
            f"corrupt weights '{_join(path, WEIGHTS_FILE)}': sha256 differs from config.json; "
            "re-save the model"
        )
    try:
        state = st_load(blob)
    except SafetensorError as exc:
        raise ModelFileError(f"corrupt weights '{_join(path, WEIGHTS_FILE)}': {exc}") from exc
    cfg = VAEConfig.from_dict(data["model"])
    _check_fits(cfg, state, path)  # before any allocation the config alone decides
    model = VAE(cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise _misfit(path, exc) from exc
    return model.to(map_location).eval()


def _check_fits(cfg: VAEConfig, state: dict[str, torch.Tensor], path: str) -> None:
    """Check the weights' tensor names and shapes against the model `cfg` describes, without memory.

    The model is built on the meta device (shapes only, no storage), so a config.json whose
    sizes disagree with the weights (say latent_dim=2e9 next to weights of latent_dim=16) fails
    here in milliseconds instead of allocating the model it describes first.

    Raises:
        ModelFileError: a tensor is missing, unexpected, or of another shape than `cfg` needs.
    """
    # torch.eye on the meta device takes seconds on its first call (its decomposition is traced), so
    # the skeleton leaves out the fitted prior's two buffers and their shapes are checked by hand.
    with torch.device("meta"):
        skeleton = VAE(dataclasses.replace(cfg, latent_prior="standard"))
    try:
        # assign=True keeps the loaded tensors instead of copying into the (storage-less) meta ones.
        skeleton.load_state_dict(
            {k: v for k, v in state.items() if k not in _PRIOR_BUFFERS}, strict=True, assign=True
        )
    except RuntimeError as exc:
        raise _misfit(path, exc) from None
    if cfg.latent_prior != "fitted":
        return  # prior buffers in the weights of a standard-prior config: the strict load names them
    groups, dim = cfg.num_classes or 1, cfg.latent_dim
    for key, shape in zip(_PRIOR_BUFFERS, ((groups, dim), (groups, dim, dim)), strict=True):
        found = tuple(state[key].shape) if key in state else None
        if found != shape:
            raise ModelFileError(
                f"weights in '{path}' do not fit its config ({key} is {found}, the config needs "
                f"{shape}): re-save the model, or restore the {CONFIG_FILE} saved with these weights"
            )


def _misfit(path: str, exc: RuntimeError) -> ModelFileError:
    """One line for a `load_state_dict` error: its first detail (torch's first line is only a title)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = lines[1] if len(lines) > 1 else (lines[0] if lines else type(exc).__name__)
    return ModelFileError(
        f"weights in '{path}' do not fit its config ({detail.rstrip('.')}): re-save the model, or "
        f"restore the {CONFIG_FILE} saved with these weights"
    )


def model_checksum(path: str, storage_options: dict | None = None) -> str:
    """sha256 of a saved model's weights, as recorded in its config."""
    return read_model_config(path, storage_options)["weights_sha256"]
