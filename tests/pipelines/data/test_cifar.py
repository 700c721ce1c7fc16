"""The "cifar10" source reads the official batch files without `pickle.load`: real CIFAR-format
batches (built here as the official files are: protocol 2 pickles of a dict with a uint8 array) load
exactly, and a pickle that asks for anything else is refused before it can run. No mocks.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from pipelines.cli import main
from pipelines.data import DataConfig, load_images
from pipelines.data.cifar import CLASSES, FOLDER, SPLIT_FILES, read_batch
from pipelines.errors import DataError
from vae.config import VAEConfig

RGB32 = VAEConfig(image_size=(32, 32), channels=3)
PER_BATCH = 4


class Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 `str` opcodes (SHORT_BINSTRING / BINSTRING), as the official files do."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def _batch(index: int, n: int = PER_BATCH) -> dict[bytes, object]:
    rng = np.random.default_rng(index)
    return {
        b"batch_label": f"training batch {index} of 5".encode(),
        b"labels": [int(v) for v in rng.integers(0, 10, size=n)],
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{index}_{i}.png".encode() for i in range(n)],
    }


def _dump(obj: object, py2: bool) -> bytes:
    buf = io.BytesIO()
    (Py2Pickler(buf, protocol=2) if py2 else pickle.Pickler(buf, protocol=2)).dump(obj)
    return buf.getvalue()


def _cifar_root(root: Path, py2: bool = True) -> tuple[Path, list[dict]]:
    """A `cifar-10-batches-py` folder of small batches (4 images each) and its batches.meta."""
    folder = root / FOLDER
    folder.mkdir(parents=True)
    batches = []
    for i, name in enumerate(SPLIT_FILES["train"] + SPLIT_FILES["test"], start=1):
        batch = _batch(i)
        (folder / name).write_bytes(_dump(batch, py2))
        batches.append(batch)
    names = [c.encode() for c in CLASSES]
    meta = {b"label_names": names, b"num_cases_per_batch": PER_BATCH, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(_dump(meta, py2))
    return root, batches


@pytest.mark.parametrize("py2", [True, False], ids=["python2-strings", "python3-protocol2"])
def test_official_layout_loads_exactly(tmp_path, py2):
    root, batches = _cifar_root(tmp_path, py2)
    train = load_images(DataConfig(source="cifar10", path=str(root)), RGB32)
    expected = np.concatenate([b[b"data"] for b in batches[:5]]).reshape(-1, 3, 32, 32)
    assert train.images.shape == (5 * PER_BATCH, 3, 32, 32)
    assert np.array_equal((train.images.numpy() * 255).round().astype(np.uint8), expected)
    assert train.labels.tolist() == [v for b in batches[:5] for v in b[b"labels"]]
    assert train.class_names == list(CLASSES) and train.ids[:2] == ["cifar10/train/0", "cifar10/train/1"]
    test = load_images(DataConfig(source="cifar10", path=str(root), split="test", limit=3), RGB32)
    assert test.labels.tolist() == batches[5][b"labels"][:3] and len(test) == 3


class _System:
    """A pickle payload: `os.system(command)` when unpickled by `pickle.load`."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _Eval:
    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return (eval, (self.code,))


class _HugeArray:
    def __reduce__(self):
        return (np.ndarray, ((10**12,),))


@pytest.mark.parametrize("payload", ["system", "eval", "huge-array", "system-inside-labels"])
def test_a_malicious_batch_is_refused_and_never_runs(tmp_path, payload, capsys):
    root, _ = _cifar_root(tmp_path / "data")
    marker = tmp_path / "pwned"
    evil = {
        "system": {b"data": _System(f"touch {marker}"), b"labels": []},
        "eval": {b"data": _Eval(f"open({str(marker)!r}, 'w').write('x')"), b"labels": []},
        "huge-array": {b"data": _HugeArray(), b"labels": []},
        "system-inside-labels": {**_batch(3), b"labels": [1, _System(f"touch {marker}")]},
    }[payload]
    path = root / FOLDER / "data_batch_3"
    path.write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(DataError) as err:
        load_images(DataConfig(source="cifar10", path=str(root)), RGB32)
    text = str(err.value)
    assert "\n" not in text and str(path) in text
    if payload != "huge-array":
        assert "is not an official CIFAR-10 batch" in text and "refusing to unpickle it" in text
    assert not marker.exists(), "the payload ran"
    # Through the CLI: one line, exit 2, the payload still not run, no model.
    out = tmp_path / "out"
    args = ["data.source=cifar10", f"data.path={root}", "train.backend=local", f"output_dir={out}"]
    code = main(["train", *args])
    err_text = capsys.readouterr().err.strip()
    assert code == 2 and len(err_text.splitlines()) == 1 and "data_batch_3" in err_text
    assert not marker.exists() and not (out / "model").exists()


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda b: {**b, b"data": b[b"data"].astype(np.int64)}, "not a readable CIFAR-10 batch"),
        (lambda b: {**b, b"labels": b[b"labels"][:-1]}, "not a CIFAR-10 batch"),
        (lambda b: {**b, b"labels": [10] * PER_BATCH}, "not a CIFAR-10 batch"),
        (lambda b: [b[b"data"]], "not a CIFAR-10 batch"),
    ],
    ids=["int64-data", "fewer-labels", "label-10", "not-a-dict"],
)
def test_batches_of_another_layout_are_refused(edit, words):
    with pytest.raises(DataError, match=words):
        read_batch(pickle.dumps(edit(_batch(1)), protocol=2), "batch")


def test_a_truncated_batch_is_one_line(tmp_path):
    blob = _dump(_batch(1), py2=True)
    with pytest.raises(DataError, match="not a readable CIFAR-10 batch") as err:
        read_batch(blob[: len(blob) // 2], "half")
    assert "\n" not in str(err.value)


def test_missing_files_name_the_expected_file(tmp_path):
    expected = r"cifar10 not found under .* \(expected .*data_batch_1\): pass data.download=true"
    with pytest.raises(DataError, match=expected):
        load_images(DataConfig(source="cifar10", path=str(tmp_path)), RGB32)
