"""Save/load: exact round trips (local and fsspec), no unpickling, and clear errors for broken files.

Storage backends share one mixin (diffusers style): each subclass only says where a model directory
lives and how to read/write raw bytes there.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import struct
import time
import uuid
from pathlib import Path

import fsspec
import pytest
import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from vae.io import (
    CONFIG_FILE,
    ENV_FILE,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    ModelFileError,
    SavedModel,
    load_model,
    model_checksum,
    read_model_config,
    save_model,
)
from vae.model import VAE

LATENT = 5


def _fixed_z(n: int = 4) -> torch.Tensor:
    return torch.randn(n, LATENT, generator=torch.Generator().manual_seed(123))


def _decode(model: VAE, z: torch.Tensor) -> torch.Tensor:
    labels = torch.arange(len(z)) % model.cfg.num_classes if model.cfg.conditional else None
    with torch.no_grad():
        return model.decode(z, labels)


# ============================================================================== storage backends
class StorageTesterMixin:
    """Round-trip and error checks that every storage backend must pass."""

    @pytest.fixture
    def path(self) -> str:
        raise NotImplementedError

    def fs(self, path: str):
        return fsspec.core.url_to_fs(path)

    def read(self, path: str, name: str) -> bytes:
        fs, root = self.fs(path)
        return fs.cat_file(f"{root}/{name}")

    def write(self, path: str, name: str, data: bytes) -> None:
        fs, root = self.fs(path)
        fs.pipe_file(f"{root}/{name}", data)

    def remove(self, path: str, name: str) -> None:
        fs, root = self.fs(path)
        fs.rm(f"{root}/{name}")

    def edit_config(self, path: str, edit) -> None:
        data = json.loads(self.read(path, CONFIG_FILE))
        edit(data)
        self.write(path, CONFIG_FILE, json.dumps(data).encode())

    # ------------------------------------------------------------------------------ round trip
    @pytest.mark.parametrize(
        "overrides",
        [
            pytest.param({}, id="uncond-8x8"),
            pytest.param({"num_classes": 3, "image_size": (20, 13), "channels": 3}, id="cond-20x13x3"),
            pytest.param({"recon_loss": "mse", "output_activation": "linear", "norm_mean": 0.1}, id="linear"),
        ],
    )
    def test_round_trip_is_exact(self, make_vae, path: str, overrides: dict) -> None:
        model = make_vae(seed=7, **overrides)
        with torch.no_grad():  # move weights off their init so a fresh-init model would not match
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        saved = save_model(model, path, extra={"classes": ["a", "b", "c"]})
        assert isinstance(saved, SavedModel) and saved.path == path

        loaded = load_model(path)
        assert loaded.cfg == model.cfg
        assert not loaded.training
        z = _fixed_z()
        assert torch.equal(_decode(loaded, z), _decode(model, z))
        for (name, a), (name_b, b) in zip(
            model.state_dict().items(), loaded.state_dict().items(), strict=True
        ):
            assert name == name_b and torch.equal(a, b), name

        data = read_model_config(path)
        assert data["extra"] == {"classes": ["a", "b", "c"]}
        assert data["format_version"] == FORMAT_VERSION
        assert saved.sha256 == data["weights_sha256"] == model_checksum(path)
        assert saved.sha256 == hashlib.sha256(self.read(path, WEIGHTS_FILE)).hexdigest()

    def test_save_replaces_a_previous_model(self, make_vae, path: str) -> None:
        save_model(make_vae(seed=1), path)
        second = make_vae(seed=2, latent_dim=LATENT)
        save_model(second, path)
        z = _fixed_z()
        assert torch.equal(_decode(load_model(path), z), _decode(second, z))

    def test_saving_twice_gives_the_same_checksum(self, make_vae, path: str) -> None:
        model = make_vae(seed=3)
        assert save_model(model, path).sha256 == save_model(model, path).sha256

    def test_environment_is_recorded(self, make_vae, path: str) -> None:
        save_model(make_vae(), path)
        env = json.loads(self.read(path, ENV_FILE))
        assert env["torch"] == torch.__version__
        assert {"vaeaug", "python", "platform", "saved_at"} <= set(env)

    # ---------------------------------------------------------------------------- no pickle
    def test_weights_are_safetensors_not_pickle(self, make_vae, path: str) -> None:
        model = make_vae()
        save_model(model, path)
        blob = self.read(path, WEIGHTS_FILE)
        assert not blob.startswith(b"PK\x03\x04")  # torch.save's zip container
        assert blob[:1] != b"\x80"  # a pickle stream (protocol >= 2)
        (header_len,) = struct.unpack("<Q", blob[:8])  # safetensors: u64 header size + JSON header
        header = json.loads(blob[8 : 8 + header_len])
        assert header.pop("__metadata__") == {"format_version": str(FORMAT_VERSION)}
        assert set(header) == set(model.state_dict())
        assert json.loads(self.read(path, CONFIG_FILE))  # the config is plain JSON

    def test_load_never_unpickles(self, make_vae, path: str, monkeypatch) -> None:
        model = make_vae()
        save_model(model, path)

        def forbidden(*args, **kwargs):
            raise AssertionError("load_model must not unpickle")

        monkeypatch.setattr(torch, "load", forbidden)
        monkeypatch.setattr(pickle, "load", forbidden)
        monkeypatch.setattr(pickle, "loads", forbidden)
        monkeypatch.setattr(pickle, "Unpickler", forbidden)
        z = _fixed_z()
        assert torch.equal(_decode(load_model(path), z), _decode(model, z))

    # ------------------------------------------------------------------------------- errors
    def test_missing_directory(self, path: str) -> None:
        with pytest.raises(ModelFileError, match="no saved model"):
            load_model(path)
        with pytest.raises(ModelFileError, match="no saved model"):
            read_model_config(path)

    def test_missing_config_is_an_incomplete_save(self, make_vae, path: str) -> None:
        save_model(make_vae(), path)
        self.remove(path, CONFIG_FILE)
        with pytest.raises(ModelFileError, match="no saved model"):
            load_model(path)

    def test_missing_weights(self, make_vae, path: str) -> None:
        save_model(make_vae(), path)
        self.remove(path, WEIGHTS_FILE)
        with pytest.raises(ModelFileError, match=WEIGHTS_FILE):
            load_model(path)

    @pytest.mark.parametrize(
        "damage",
        [
            pytest.param(lambda b: b[: len(b) // 2], id="truncated-half"),
            pytest.param(lambda b: b[:-1], id="truncated-1-byte"),
            pytest.param(lambda b: b[:8], id="header-only"),
            pytest.param(lambda b: b"", id="empty"),
            pytest.param(lambda b: b[:-1] + bytes([b[-1] ^ 0xFF]), id="flipped-last-byte"),
            pytest.param(lambda b: b + b"\x00", id="trailing-byte"),
        ],
    )
    def test_corrupt_weights(self, make_vae, path: str, damage) -> None:
        save_model(make_vae(), path)
        self.write(path, WEIGHTS_FILE, damage(self.read(path, WEIGHTS_FILE)))
        with pytest.raises(ModelFileError, match="corrupt"):
            load_model(path)

    @pytest.mark.parametrize(
        "damage",
        [
            pytest.param(lambda b: b[: len(b) // 2], id="truncated"),
            pytest.param(lambda b: b[:8] + b"not json" + b[16:], id="bad-header"),
            pytest.param(lambda b: b"\xff" * 8 + b[8:], id="huge-header-length"),
        ],
    )
    def test_corrupt_weights_with_matching_checksum(self, make_vae, path: str, damage) -> None:
        """Damage that also rewrote the checksum must still fail as 'corrupt' (safetensors parse)."""
        save_model(make_vae(), path)
        bad = damage(self.read(path, WEIGHTS_FILE))
        self.write(path, WEIGHTS_FILE, bad)
        self.edit_config(path, lambda d: d.update(weights_sha256=hashlib.sha256(bad).hexdigest()))
        with pytest.raises(ModelFileError, match="corrupt"):
            load_model(path)

    @pytest.mark.parametrize(
        ("edit", "match"),
        [
            pytest.param(lambda d: d["model"].update(latnet_dim=3), "latnet_dim", id="unknown-model-key"),
            pytest.param(lambda d: d["model"].update(latent_dim=0), "latent_dim", id="invalid-value"),
            pytest.param(
                lambda d: d["model"].update(latent_dim=2_000_000_000), "latent_dim", id="latent_dim-2e9"
            ),
            pytest.param(lambda d: d["model"].update(beta=math.inf), "beta", id="beta-infinity"),
            pytest.param(lambda d: d["model"].update(output_activation="tanh"), "bce", id="bce+tanh"),
            pytest.param(lambda d: d.pop("model"), "corrupt", id="no-model-section"),
            pytest.param(lambda d: d.update(model=[1, 2]), "corrupt", id="model-not-a-dict"),
            pytest.param(
                lambda d: d.update(format_version=FORMAT_VERSION + 1), "format_version", id="future"
            ),
            pytest.param(lambda d: d.pop("format_version"), "format_version", id="no-format-version"),
            pytest.param(lambda d: d.update(weights_sha256=None), "corrupt", id="checksum-null"),
        ],
    )
    def test_bad_config(self, make_vae, path: str, edit, match: str) -> None:
        save_model(make_vae(), path)
        self.edit_config(path, edit)
        with pytest.raises(ModelFileError, match=match):
            load_model(path)
        with pytest.raises(ModelFileError):
            read_model_config(path)

    def test_config_not_json(self, make_vae, path: str) -> None:
        save_model(make_vae(), path)
        self.write(path, CONFIG_FILE, b'{"format_version": 1, "model": ')
        with pytest.raises(ModelFileError, match="corrupt model config"):
            load_model(path)

    def test_missing_checksum(self, make_vae, path: str) -> None:
        """A config.json without `weights_sha256` is a broken save, reported as such (not a KeyError)."""
        save_model(make_vae(), path)
        self.edit_config(path, lambda d: d.pop("weights_sha256"))
        with pytest.raises(ModelFileError, match="weights_sha256"):
            load_model(path)
        with pytest.raises(ModelFileError, match="weights_sha256"):
            model_checksum(path)

    @pytest.mark.parametrize(
        "change",
        [
            pytest.param({"latent_dim": LATENT + 1}, id="latent_dim"),
            pytest.param({"hidden_channels": [4, 8, 8]}, id="depth"),
            pytest.param({"num_classes": 3}, id="conditional"),
        ],
    )
    def test_weights_that_do_not_fit_the_config(self, make_vae, path: str, change: dict) -> None:
        save_model(make_vae(), path)
        self.edit_config(path, lambda d: d["model"].update(change))
        with pytest.raises(ModelFileError, match="do not fit"):
            load_model(path)

    def test_a_config_far_larger_than_its_weights_fails_before_allocating(self, make_vae, path: str) -> None:
        """Sizes within the bounds that would still need ~300 TB: the shapes are compared first."""
        save_model(make_vae(), path)
        huge = {"latent_dim": 4096, "image_size": [4096, 4096], "hidden_channels": [4096]}
        self.edit_config(path, lambda d: d["model"].update(huge, latent_prior="standard"))
        start = time.perf_counter()
        with pytest.raises(ModelFileError, match="do not fit its config") as info:
            load_model(path)
        assert time.perf_counter() - start < 10
        assert "\n" not in str(info.value) and "re-save the model" in str(info.value)

    def test_prior_buffers_of_another_shape(self, make_vae, path: str) -> None:
        model = make_vae(num_classes=3)
        save_model(model, path)
        state = safetensors_load(self.read(path, WEIGHTS_FILE))
        state["prior_scale_tril"] = torch.eye(LATENT + 1).repeat(3, 1, 1)
        blob = safetensors_save(state)
        self.write(path, WEIGHTS_FILE, blob)
        self.edit_config(path, lambda d: d.update(weights_sha256=hashlib.sha256(blob).hexdigest()))
        with pytest.raises(
            ModelFileError, match=r"prior_scale_tril is \(3, 6, 6\), the config needs \(3, 5, 5\)"
        ):
            load_model(path)

    @pytest.mark.parametrize(
        "edit",
        [
            pytest.param(lambda st: st.pop("decoder.to_pixels.bias"), id="missing-tensor"),
            pytest.param(lambda st: st.update(extra=torch.zeros(2)), id="unexpected-tensor"),
        ],
    )
    def test_weights_with_missing_or_extra_tensors(self, make_vae, path: str, edit) -> None:
        """Well-formed safetensors with a valid checksum but the wrong set of tensors."""
        model = make_vae()
        save_model(model, path)
        state = safetensors_load(self.read(path, WEIGHTS_FILE))
        edit(state)
        blob = safetensors_save(state)
        self.write(path, WEIGHTS_FILE, blob)
        self.edit_config(path, lambda d: d.update(weights_sha256=hashlib.sha256(blob).hexdigest()))
        with pytest.raises(ModelFileError, match="do not fit"):
            load_model(path)


class TestLocalStorage(StorageTesterMixin):
    @pytest.fixture
    def path(self, tmp_path: Path) -> str:
        return str(tmp_path / "nested" / "model")


class TestLocalFileURL(StorageTesterMixin):
    @pytest.fixture
    def path(self, tmp_path: Path) -> str:
        return f"file://{tmp_path}/model/"  # URL form with a trailing slash


class TestMemoryStorage(StorageTesterMixin):
    @pytest.fixture
    def path(self):
        path = f"memory://vaeaug-tests/{uuid.uuid4().hex}/model"
        yield path
        fs, root = fsspec.core.url_to_fs(path)
        if fs.exists(root):
            fs.rm(root, recursive=True)


def test_load_model_map_location(make_vae, tmp_path: Path) -> None:
    save_model(make_vae(), str(tmp_path))
    loaded = load_model(str(tmp_path), map_location=torch.device("cpu"))
    assert loaded.device == torch.device("cpu")


def test_model_file_error_is_a_value_error() -> None:
    assert issubclass(ModelFileError, ValueError)
