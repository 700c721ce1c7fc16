"""Data sources on real data and real storage: digits, MNIST, image folders and HF Parquet.

Local disk, fsspec memory:// and a moto S3 server (the `s3` fixture) hold the same files; loads from
each must agree. No mocks.
"""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pipelines.data import LOADERS, SOURCES, DataConfig, ImageSet, load_images
from pipelines.errors import DataError
from vae.config import ConfigError, VAEConfig

GRAY8 = VAEConfig(image_size=(8, 8), channels=1)
RGB12x10 = VAEConfig(image_size=(12, 10), channels=3)

# Solid-colour images of mixed sizes, modes and formats: (relative path, mode, (w, h), colour).
# Expected pixel values are exact for PNG and approximate for JPEG.
TREE = [
    ("cat/a.png", "RGB", (20, 16), (255, 0, 0)),
    ("cat/b.JPG", "L", (9, 9), 200),
    ("dog/c.png", "RGBA", (12, 30), (0, 255, 0, 255)),
    ("dog/sub/d.jpeg", "RGB", (8, 8), (0, 0, 255)),
    ("emu/e.png", "P", (15, 15), None),  # palette image with a transparent index
    ("emu/f.png", "L", (8, 8), 40),
]
EXPECTED_IDS = ["cat/a.png", "cat/b.JPG", "dog/c.png", "dog/sub/d.jpeg", "emu/e.png", "emu/f.png"]
#: Expected grey value (0..255, PIL "L" luma) of each image in TREE.
EXPECTED_GRAY = [76, 200, 150, 29, 128, 40]


def _encode(mode: str, size: tuple[int, int], colour, fmt: str) -> bytes:
    if mode == "P":
        img = Image.new("P", size, 1)
        img.putpalette([0, 0, 0, 128, 128, 128] + [0] * (256 * 3 - 6))
        img.info["transparency"] = 0
    else:
        img = Image.new(mode, size, colour)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"transparency": 0} if mode == "P" else {}))
    return buf.getvalue()


def _tree_files() -> dict[str, bytes]:
    files = {}
    for rel, mode, size, colour in TREE:
        fmt = "JPEG" if rel.lower().endswith((".jpg", ".jpeg")) else "PNG"
        files[rel] = _encode(mode, size, colour, fmt)
    files["README.txt"] = b"files at the root belong to no class"
    files["cat/notes.txt"] = b"not an image"
    files[".hidden/x.png"] = files["cat/a.png"]
    return files


def _write_local(root: Path, files: dict[str, bytes]) -> Path:
    for rel, blob in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(blob)
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A local class-folder tree (3 classes, PNG + JPEG, mixed sizes and modes)."""
    return _write_local(tmp_path_factory.mktemp("tree"), _tree_files())


# ----------------------------------------------------------------------------- config


def test_registry_covers_every_source():
    assert set(LOADERS) == set(SOURCES)


def test_config_round_trip_and_errors():
    cfg = DataConfig(source="folder", path="s3://b/x", limit=5, storage_options={"anon": True})
    assert DataConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert DataConfig(source="mnist").root == "./data"
    with pytest.raises(ConfigError, match=r"data.source='foo' is unknown: use one of \['digits'"):
        DataConfig(source="foo")
    with pytest.raises(ConfigError, match=r"unknown data config key\(s\) \['pth'\]: valid keys .*'path'"):
        DataConfig.from_dict({"source": "folder", "pth": "x"})
    with pytest.raises(ConfigError, match="data.path is required for data.source='parquet'"):
        DataConfig(source="parquet")
    with pytest.raises(ConfigError, match="data.split='val'"):
        DataConfig(split="val")
    with pytest.raises(ConfigError, match="data.limit=0"):
        DataConfig(limit=0)
    with pytest.raises(ConfigError, match="local folder only"):
        DataConfig(source="mnist", path="s3://b/data")


# ----------------------------------------------------------------------------- digits


@pytest.mark.parametrize(
    ("model", "lo", "hi"),
    [
        (VAEConfig(), 0.0, 1.0),
        (VAEConfig(output_activation="tanh", recon_loss="mse"), -1.0, 1.0),
        (
            VAEConfig(output_activation="linear", recon_loss="mse", norm_mean=0.25, norm_std=0.5),
            -0.5,
            1.5,
        ),
    ],
)
def test_digits_range(model, lo, hi):
    s = load_images(DataConfig(), model)
    assert len(s) == 1797 and s.images.shape == (1797, 1, 8, 8)
    assert s.images.dtype == torch.float32 and s.labels.dtype == torch.int64
    assert s.images.min().item() == pytest.approx(lo, abs=1e-6)
    assert s.images.max().item() == pytest.approx(hi, abs=1e-6)
    assert s.class_names == [str(i) for i in range(10)]
    assert s.ids[:2] == ["digits/0", "digits/1"] and len(set(s.ids)) == 1797


def test_digits_limit_fingerprint_split():
    full, again = load_images(DataConfig(), GRAY8), load_images(DataConfig(), GRAY8)
    assert full.fingerprint() == again.fingerprint()
    small = load_images(DataConfig(limit=100), GRAY8)
    assert len(small) == 100 and torch.equal(small.images, full.images[:100])
    assert small.fingerprint() != full.fingerprint()

    train, val = full.split(0.2, seed=3)
    train2, val2 = full.split(0.2, seed=3)
    assert train.ids == train2.ids and val.ids == val2.ids
    assert len(val) == round(1797 * 0.2) and len(train) + len(val) == 1797
    assert not set(train.ids) & set(val.ids)
    assert val.ids != full.split(0.2, seed=4)[1].ids
    assert torch.equal(val.images, full.subset([int(i.split("/")[1]) for i in val.ids]).images)
    tiny_train, tiny_val = small.split(0.001, seed=0)
    assert len(tiny_val) == 1 and len(tiny_train) == 99
    assert len(small.split(0.0)[1]) == 0


def test_digits_resized_and_rgb():
    s = load_images(DataConfig(limit=50), VAEConfig(image_size=(16, 16), channels=3))
    assert s.images.shape == (50, 3, 16, 16)
    assert torch.equal(s.images[:, 0], s.images[:, 2])  # grey repeated over RGB
    assert 0.0 <= s.images.min().item() and s.images.max().item() <= 1.0


# ----------------------------------------------------------------------------- torchvision


def test_mnist_train_and_test(mnist_root):
    train = load_images(DataConfig(source="mnist", path=str(mnist_root)), VAEConfig(image_size=(28, 28)))
    assert train.images.shape == (60000, 1, 28, 28)
    assert train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert len(train.class_names) == 10 and train.ids[0] == "mnist/train/0"
    assert train.images.min().item() == 0.0 and train.images.max().item() == 1.0
    test = load_images(
        DataConfig(source="mnist", path=str(mnist_root), split="test", limit=None),
        VAEConfig(image_size=(16, 16)),
    )
    assert test.images.shape == (10000, 1, 16, 16) and test.ids[-1] == "mnist/test/9999"


def test_mnist_missing_without_download(tmp_path):
    with pytest.raises(DataError, match=r"mnist not found under .*MNIST/raw/.*data.download=true") as err:
        load_images(DataConfig(source="mnist", path=str(tmp_path)), GRAY8)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- folder


def _check_tree(s: ImageSet, model: VAEConfig) -> None:
    assert s.class_names == ["cat", "dog", "emu"]
    assert s.ids == EXPECTED_IDS
    assert s.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert s.images.shape == (6, *model.image_shape)


def test_folder_local_gray_and_rgb(tree):
    gray = load_images(DataConfig(source="folder", path=str(tree)), GRAY8)
    _check_tree(gray, GRAY8)
    means = (gray.images.mean(dim=(1, 2, 3)) * 255).tolist()
    assert means == pytest.approx(EXPECTED_GRAY, abs=3)  # JPEG is lossy

    rgb = load_images(DataConfig(source="folder", path=str(tree) + "/"), RGB12x10)
    _check_tree(rgb, RGB12x10)
    red, green = rgb.images[0], rgb.images[2]
    assert red[0].min().item() == 1.0 and red[1:].max().item() == 0.0
    assert green[1].min().item() == 1.0 and green[[0, 2]].max().item() == 0.0
    assert load_images(DataConfig(source="folder", path=str(tree), limit=3), GRAY8).ids == EXPECTED_IDS[:3]


def test_folder_memory_and_s3_equal_local(tree, s3):
    local = load_images(DataConfig(source="folder", path=str(tree)), RGB12x10)

    mem_root = f"/tree-{uuid.uuid4().hex[:8]}"
    mem = fsspec.filesystem("memory")
    try:
        for rel, blob in _tree_files().items():
            mem.pipe_file(f"{mem_root}/{rel}", blob)
        from_mem = load_images(DataConfig(source="folder", path=f"memory://{mem_root}"), RGB12x10)
    finally:
        mem.rm(mem_root, recursive=True)

    bucket = s3.new_bucket()
    s3fs_ = fsspec.filesystem("s3", **s3.storage_options())
    for rel, blob in _tree_files().items():
        s3fs_.pipe_file(f"{bucket}/imgs/{rel}", blob)
    from_s3 = load_images(
        DataConfig(source="folder", path=f"s3://{bucket}/imgs", storage_options=s3.storage_options()),
        RGB12x10,
    )
    for other in (from_mem, from_s3):
        assert other.ids == local.ids and other.class_names == local.class_names
        assert torch.equal(other.images, local.images) and other.fingerprint() == local.fingerprint()

    s3fs_.pipe_file(f"{bucket}/imgs/dog/3.png", b"\x89PNG\r\n garbage")
    with pytest.raises(DataError, match=rf"corrupt image 's3://{bucket}/imgs/dog/3.png': cannot identify"):
        load_images(DataConfig(source="folder", path=f"s3://{bucket}/imgs"), GRAY8)  # env endpoint


def test_folder_errors(tmp_path, tree):
    def load(path):
        return load_images(DataConfig(source="folder", path=str(path)), GRAY8)

    with pytest.raises(DataError, match="does not exist: check the path or URL"):
        load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has no class subfolders: put the images in one subfolder per class"):
        load(tmp_path / "empty")
    _write_local(tmp_path / "noimg", {"a/readme.txt": b"x", "b/img.gif": b"GIF89a"})
    with pytest.raises(DataError, match=r"no image files under .*\['a', 'b'\].*\.png, \.jpg, \.jpeg"):
        load(tmp_path / "noimg")
    with pytest.raises(DataError, match="is a file, not a folder"):
        load(tree / "cat" / "a.png")
    bad = _write_local(tmp_path / "bad", {"cat/ok.png": _tree_files()["cat/a.png"], "cat/bad.png": b"nope"})
    with pytest.raises(DataError) as err:
        load(bad)
    msg = str(err.value)
    assert "corrupt image" in msg and "cat/bad.png" in msg and "remove or replace it" in msg
    assert "\n" not in msg and "BytesIO" not in msg


# ----------------------------------------------------------------------------- parquet


def _hf_table(with_metadata: bool = True, n: int = 6) -> pa.Table:
    files = _tree_files()
    rels = [rel for rel, *_ in TREE][:n]
    image = pa.array(
        [{"bytes": files[rel], "path": rel.rsplit("/", 1)[-1]} for rel in rels],
        type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    label = pa.array([0, 0, 1, 1, 2, 2][:n], type=pa.int64())
    table = pa.table({"image": image, "label": label})
    if with_metadata:
        features = {
            "image": {"_type": "Image"},
            "label": {"names": ["cat", "dog", "emu"], "_type": "ClassLabel"},
        }
        table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    return table


def test_parquet_local_and_s3(tmp_path, tree, s3):
    pq.write_table(_hf_table(), tmp_path / "train.parquet")
    local = load_images(DataConfig(source="parquet", path=str(tmp_path / "train.parquet")), RGB12x10)
    assert local.class_names == ["cat", "dog", "emu"] and local.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert local.ids == [f"train.parquet#{i}" for i in range(6)]
    from_folder = load_images(DataConfig(source="folder", path=str(tree)), RGB12x10)
    assert torch.equal(local.images, from_folder.images)  # same bytes, same decoding

    bucket = s3.new_bucket()
    fs = fsspec.filesystem("s3", **s3.storage_options())
    table = _hf_table()
    fs.pipe_file(f"{bucket}/ds/data/train-00001.parquet", _parquet_bytes(table.slice(3)))
    fs.pipe_file(f"{bucket}/ds/data/train-00000.parquet", _parquet_bytes(table.slice(0, 3)))
    fs.pipe_file(f"{bucket}/ds/_SUCCESS", b"")
    remote = load_images(DataConfig(source="parquet", path=f"s3://{bucket}/ds"), RGB12x10)  # env endpoint
    assert remote.ids == [f"data/train-00000.parquet#{i}" for i in range(3)] + [
        f"data/train-00001.parquet#{i}" for i in range(3)
    ]
    assert torch.equal(remote.images, local.images) and remote.fingerprint() == local.fingerprint()
    limited = load_images(DataConfig(source="parquet", path=f"s3://{bucket}/ds", limit=4), RGB12x10)
    assert limited.ids == remote.ids[:4]


def test_parquet_written_by_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    files = _tree_files()
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog", "emu"])}
    )
    ds = datasets.Dataset.from_dict(
        {
            "image": [Image.open(io.BytesIO(files[rel])) for rel in EXPECTED_IDS],
            "label": [0, 0, 1, 1, 2, 2],
        },
        features=features,
    )
    ds.to_parquet(str(tmp_path / "hf.parquet"))
    s = load_images(DataConfig(source="parquet", path=str(tmp_path / "hf.parquet")), GRAY8)
    assert s.class_names == ["cat", "dog", "emu"] and s.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert (s.images.mean(dim=(1, 2, 3)) * 255).tolist() == pytest.approx(EXPECTED_GRAY, abs=3)


def test_parquet_without_metadata_falls_back(tmp_path):
    pq.write_table(_hf_table(with_metadata=False, n=4), tmp_path / "x.parquet")
    s = load_images(DataConfig(source="parquet", path=str(tmp_path)), GRAY8)
    assert s.class_names == ["0", "1"] and s.ids == [f"x.parquet#{i}" for i in range(4)]


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def test_parquet_errors(tmp_path):
    def load(path, **kw):
        return load_images(DataConfig(source="parquet", path=str(path), **kw), GRAY8)

    with pytest.raises(DataError, match="does not exist"):
        load(tmp_path / "missing.parquet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .parquet files under"):
        load(tmp_path / "empty")

    table = _hf_table(n=2)
    pq.write_table(table.rename_columns(["image", "target"]), tmp_path / "nolabel.parquet")
    with pytest.raises(DataError) as err:
        load(tmp_path / "nolabel.parquet")
    msg = str(err.value)
    assert "'label' not found" in msg and "['image', 'target']" in msg and "data.label_column" in msg

    wrong = pa.table({"image": pa.array(["a.png", "b.png"]), "label": pa.array([0, 1])})
    pq.write_table(wrong, tmp_path / "wrongtype.parquet")
    with pytest.raises(DataError, match=r"column 'image' .* has type string, not struct<bytes"):
        load(tmp_path / "wrongtype.parquet")

    corrupt = pa.table(
        {
            "image": pa.array(
                [table["image"][0].as_py(), {"bytes": b"broken", "path": "zz.png"}], type=table["image"].type
            ),
            "label": pa.array([0, 1]),
        }
    )
    pq.write_table(corrupt, tmp_path / "corrupt.parquet")
    with pytest.raises(DataError, match=r"corrupt image in '.*corrupt.parquet' row 1: cannot identify"):
        load(tmp_path / "corrupt.parquet")
    with pytest.raises(DataError, match="'lbl' not found"):
        load(tmp_path / "nolabel.parquet", label_column="lbl", image_column="image")
