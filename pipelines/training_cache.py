"""The flow's training cache: one small, strictly validated JSON record per training key.

A re-run with the same data, training settings and training code reuses the exported model instead
of training again. The record lives at `<root>/train/<key>.json`, where root is `flow.result_storage`
or `<output_dir>/.cache` (local path or fsspec URL); `TrainingCache` is the flow's handle on it.

Why not Prefect's result cache (a task `cache_key_fn` over the same key): Prefect only looks a cached
result up when it persists results (`persist_result=False` turns any cache policy off), and reading
one back loads it with the serializer the stored record names, so a record planted in shared storage
can ask for pickle whatever serializer we configure, and loading it runs code. Nor can a Prefect cache
hit check that the model still has the recorded checksum. So the key is computed by
`training_cache_key` (what a `cache_key_fn` would compute) and what is read back here is plain JSON
data, checked field by field; a record that does not check out is ignored with a one-line warning and
training runs again.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import math
import os
import re
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.console import console
from pipelines.storage import first_line, join, open_url

if TYPE_CHECKING:
    from pipelines.config import PipelineConfig
    from pipelines.training.export import TrainResult

#: Bumped when the record's fields or the key's recipe change (older records then miss the cache).
FORMAT_VERSION = 1
#: Packages whose source is part of the key: a change to the model or the training loop retrains.
TRAINING_CODE = ("vae", "pipelines.training")
#: A record is a few KB (one row per epoch); anything far larger is not one of ours.
MAX_RECORD_BYTES = 4 * 2**20
_HEX64 = re.compile(r"[0-9a-f]{64}")


class RecordError(ValueError):
    """A stored record that does not validate (the message names the field)."""


@dataclass(frozen=True)
class TrainingRecord:
    """What a training run produced, as stored in the cache (JSON types only).

    Args:
        model_dir: the exported model directory.
        sha256: the model weights' checksum (64 hex digits), checked against the model on reuse.
        history: one metrics row per epoch (finite numbers).
        grid_path: the samples/reconstructions picture inside `model_dir`.
        data_fingerprint: `ImageSet.fingerprint()` of the data trained on.
        key: the cache key (`training_key`) the record was written under.
        worker_nodes: Ray node id of each training worker (None where unknown).
        run_name: the Ray Train run name (None for local training).
        run_dir: the Ray Train run directory (None for local training).
        format: `FORMAT_VERSION` of the record.
    """

    model_dir: str
    sha256: str
    history: list[dict[str, float]]
    grid_path: str
    data_fingerprint: str
    key: str
    worker_nodes: list[str | None] = field(default_factory=list)
    run_name: str | None = None
    run_dir: str | None = None
    format: int = FORMAT_VERSION

    def to_json(self) -> str:
        """The record as JSON text.

        Raises:
            ValueError: a history value is not a finite number (JSON has no NaN).
        """
        return json.dumps(asdict(self), sort_keys=True, indent=1, allow_nan=False)

    @classmethod
    def of(cls, result: TrainResult, data_fingerprint: str, key: str) -> TrainingRecord:
        """The record of a training that just ran.

        Args:
            result: the export's result; a Ray Train run's (`DistributedTrainResult`) also names
                its run and the node of each worker (local training and a Ray Job's have none).
            data_fingerprint: `ImageSet.fingerprint()` of the data trained on.
            key: the `training_cache_key` it is stored under.
        """
        from pipelines.training.ray_train import DistributedTrainResult

        run = result if isinstance(result, DistributedTrainResult) else None
        return cls(
            model_dir=result.model_dir,
            sha256=result.sha256,
            history=list(result.history),
            grid_path=result.grid_path,
            data_fingerprint=data_fingerprint,
            key=key,
            worker_nodes=[w.get("node_id") for w in run.workers] if run else [],
            run_name=(run.run_name or None) if run else None,
            run_dir=(run.run_dir or None) if run else None,
        )

    def model_unchanged(self) -> bool:
        """Whether the recorded model is still there with the recorded checksum."""
        from vae.io import ModelFileError, model_checksum

        try:
            return model_checksum(self.model_dir) == self.sha256
        except (ModelFileError, OSError):
            return False

    @classmethod
    def from_json(cls, text: str) -> TrainingRecord:
        """Parse and validate a stored record.

        Args:
            text: the record's JSON text.

        Returns:
            The record.

        Raises:
            RecordError: not JSON, or a field is missing, unknown or of the wrong type or form.
        """
        try:
            raw = json.loads(text, parse_constant=_reject_constant)
        except ValueError as exc:  # JSONDecodeError, and NaN/Infinity
            raise RecordError(f"not a JSON record ({first_line(exc)})") from None
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: Any) -> TrainingRecord:
        """Validate a decoded record (exact fields, exact types; see `TrainingRecord`).

        Raises:
            RecordError: the first field that does not validate.
        """
        if not isinstance(raw, dict):
            raise RecordError(f"not a JSON object but {type(raw).__name__}")
        names = {f.name for f in fields(cls)}
        if set(raw) != names:
            odd = sorted(set(raw) ^ names)
            raise RecordError(f"missing or unknown fields {odd}")
        if type(raw["format"]) is not int or raw["format"] != FORMAT_VERSION:
            raise RecordError(f"format {raw['format']!r} is not {FORMAT_VERSION}")
        for name in ("sha256", "data_fingerprint", "key"):
            _require(isinstance(raw[name], str) and _HEX64.fullmatch(raw[name]), name, "64 hex digits")
        for name in ("model_dir", "grid_path"):
            _require(isinstance(raw[name], str) and raw[name], name, "a non-empty string")
        for name in ("run_name", "run_dir"):
            _require(raw[name] is None or isinstance(raw[name], str), name, "a string or null")
        nodes = raw["worker_nodes"]
        ok = isinstance(nodes, list) and all(n is None or isinstance(n, str) for n in nodes)
        _require(ok, "worker_nodes", "a list of strings or nulls")
        _require(_is_history(raw["history"]), "history", "a list of {name: finite number} rows")
        return cls(**raw)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number")


def _require(ok: Any, name: str, what: str) -> None:
    if not ok:
        raise RecordError(f"{name} must be {what}")


def _is_number(value: Any) -> bool:
    # bool is an int subclass: `true` is not a loss value
    return type(value) in (int, float) and math.isfinite(value)


def _is_history(history: Any) -> bool:
    return isinstance(history, list) and all(
        isinstance(row, dict) and all(isinstance(k, str) and _is_number(v) for k, v in row.items())
        for row in history
    )


# ------------------------------------------------------------------------------------- the key
@functools.cache
def code_digest() -> str:
    """sha256 over the source files of `TRAINING_CODE` (relative path and bytes, in path order)."""
    h = hashlib.sha256()
    for package in TRAINING_CODE:
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.submodule_search_locations, package  # our own packages
        root = Path(list(spec.submodule_search_locations)[0])
        for path in sorted(root.rglob("*.py")):
            h.update(f"{package}/{path.relative_to(root).as_posix()}\0".encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def package_version() -> str:
    """The installed vaeaug version ("unknown" when running from an uninstalled tree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vaeaug")
    except PackageNotFoundError:
        return "unknown"


def training_inputs(cfg: PipelineConfig) -> dict[str, Any]:
    """The config sections that determine the trained model (the key's inputs).

    Redacted: the key is derived from them and secrets must not reach anything derived or stored.
    """
    full = cfg.to_dict(redact=True)
    return {k: full[k] for k in ("data", "model", "train", "conditional", "output_dir")}


def training_cache_key(cfg: PipelineConfig, data_fingerprint: str) -> str:
    """The training's cache key: `training_key` over this data and this config's training sections."""
    return training_key(training_inputs(cfg), data_fingerprint)


def training_key(inputs: dict[str, Any], data_fingerprint: str) -> str:
    """The cache key: sha256 over the data fingerprint, the training inputs, version and code.

    Args:
        inputs: the settings that determine the model, secrets redacted (JSON-ready).
        data_fingerprint: `ImageSet.fingerprint()` of the data.

    Returns:
        64 hex digits.
    """
    blob = {
        "format": FORMAT_VERSION,
        "data": data_fingerprint,
        "inputs": inputs,
        "version": package_version(),
        "code": code_digest(),
    }
    text = json.dumps(blob, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def record_path(result_storage: str | None, output_dir: str, key: str) -> str:
    """`<result_storage or <output_dir>/.cache>/train/<key>.json`."""
    root = result_storage if result_storage is not None else join(output_dir, ".cache")
    return join(root, "train", f"{key}.json")


@dataclass(frozen=True)
class TrainingCache:
    """The flow's training cache for one run: where its record lives and what it must match.

    Args:
        path: the record's location (`record_path`).
        key: `training_cache_key` of this data and config.
        data_fingerprint: `ImageSet.fingerprint()` of this run's data.
        model_dir: where this config's model lives.
    """

    path: str
    key: str
    data_fingerprint: str
    model_dir: str

    @classmethod
    def open(cls, cfg: PipelineConfig, data_fingerprint: str) -> TrainingCache:
        """The cache of `cfg`'s training on data with this fingerprint."""
        key = training_cache_key(cfg, data_fingerprint)
        assert cfg.output_dir is not None  # set when the config is built (`PipelineConfig._resolve_paths`)
        path = record_path(cfg.flow.result_storage, cfg.output_dir, key)
        return cls(path=path, key=key, data_fingerprint=data_fingerprint, model_dir=cfg.model_dir)

    def lookup(self) -> TrainingRecord | None:
        """The stored record whose model is still there unchanged, else None (training must run)."""
        record = load_record(self.path, self.key, self.data_fingerprint, self.model_dir)
        if record is not None and not record.model_unchanged():
            console.line(f"cached model at {record.model_dir} is gone or changed: retraining")
            return None
        return record

    def store(self, record: TrainingRecord) -> None:
        """Store the record of a training that just ran (a warning when it cannot be stored)."""
        save_record(self.path, record)


# ---------------------------------------------------------------------------- reading, writing
def load_record(path: str, key: str, data_fingerprint: str, model_dir: str) -> TrainingRecord | None:
    """The validated record at `path` for this key, or None (absent, or ignored with a warning).

    Args:
        path: from `record_path`.
        key: the key the record must carry.
        data_fingerprint: the fingerprint the record must carry.
        model_dir: where this config's model lives; the record must point there.

    Returns:
        The record, or None: training must run.
    """
    fs, local = open_url(path)
    try:
        with fs.open(local, "rb") as f:
            blob = f.read(MAX_RECORD_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        _warn(path, f"cannot be read ({_one_line(exc)})")
        return None
    try:
        if len(blob) > MAX_RECORD_BYTES:
            raise RecordError(f"larger than {MAX_RECORD_BYTES} bytes")
        try:
            text = blob.decode("utf-8")
        except UnicodeDecodeError:
            raise RecordError("not UTF-8 JSON text") from None
        record = TrainingRecord.from_json(text)
        _require(record.key == key, "key", "this run's key (the file was copied or renamed)")
        _require(record.data_fingerprint == data_fingerprint, "data_fingerprint", "this data's")
        _require(record.model_dir == model_dir, "model_dir", f"this config's {model_dir}")
        _require(record.grid_path.startswith(join(model_dir, "")), "grid_path", "in model_dir")
    except RecordError as exc:
        _warn(path, _one_line(exc))
        return None
    return record


def save_record(path: str, record: TrainingRecord) -> None:
    """Store `record` at `path`: a write then a rename on local disks, one PUT on object stores.

    A record that cannot be stored only costs the next run a training: it is a warning, not an error.
    """
    try:
        blob = record.to_json().encode()
    except ValueError as exc:  # a non-finite loss: the model is not worth reusing
        console.line(f"warning: training cache not written: {_one_line(exc)}")
        return
    fs, local = open_url(path)
    try:
        if "file" in fs.protocol:
            # readers never see a half-written record: rename is atomic within a directory
            os.makedirs(os.path.dirname(local), exist_ok=True)
            tmp = f"{local}.{uuid.uuid4().hex}.tmp"
            try:
                with open(tmp, "wb") as f:
                    f.write(blob)
                os.replace(tmp, local)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        else:
            fs.pipe_file(local, blob)  # a single PUT: an object is never visible half-written
    except OSError as exc:
        console.line(f"warning: training cache not written to {path} ({_one_line(exc)}): the next run trains")


def _warn(path: str, reason: str) -> None:
    console.line(f"warning: ignored the training cache record {path}: {reason}; training again")


def _one_line(exc: BaseException) -> str:
    return first_line(exc)[:300]


__all__ = [
    "FORMAT_VERSION",
    "RecordError",
    "TrainingCache",
    "TrainingRecord",
    "code_digest",
    "load_record",
    "record_path",
    "save_record",
    "training_cache_key",
    "training_inputs",
    "training_key",
]
