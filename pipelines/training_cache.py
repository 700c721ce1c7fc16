"""The flow's training cache: one small, strictly validated JSON record per training key.

A re-run with the same data, training settings and training code reuses the exported model instead
of training again. The record lives at `<root>/train/<key>.json`, where root is `flow.result_storage`
or `<output_dir>/.cache` (local path or fsspec URL).

Why not Prefect's result persistence: its results are pickled by default, and a stored result record
names its own serializer, so a record planted in shared storage can ask for pickle whatever serializer
we configure, and loading it runs code. What is read back here is plain JSON data, checked field by
field; a record that does not check out is ignored with a one-line warning and training runs again.
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
from typing import Any

import fsspec

from pipelines.console import console

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

    def summary(self) -> dict[str, Any]:
        """The record as a plain dict (what the flow's summary and artifacts read)."""
        return asdict(self)

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
            raise RecordError(f"not a JSON record ({str(exc).splitlines()[0]})") from None
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
    root = result_storage if result_storage is not None else output_dir.rstrip("/") + "/.cache"
    return f"{root.rstrip('/')}/train/{key}.json"


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
    fs, local = fsspec.core.url_to_fs(path)
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
        _require(record.grid_path.startswith(model_dir.rstrip("/") + "/"), "grid_path", "in model_dir")
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
    fs, local = fsspec.core.url_to_fs(path)
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
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


__all__ = [
    "FORMAT_VERSION",
    "RecordError",
    "TrainingRecord",
    "code_digest",
    "load_record",
    "record_path",
    "save_record",
    "training_key",
]
