"""`model.image_size`/`model.channels` inferred from the data when unset; explicit values win.

Real files on local disk and fsspec memory://, real Parquet, a real (tiny) local training run. No mocks.
"""

from __future__ import annotations

import dataclasses
import io
import json
import uuid
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image, PngImagePlugin

from pipelines.cli import main
from pipelines.config import config_from_dict, config_yaml, load_config
from pipelines.data import SOURCES, DataConfig, infer_data_shape, resolve_data_shape
from pipelines.data.folder import folder_headers
from pipelines.data.shape import FIXED_SHAPES, HEADER_READERS
from pipelines.errors import DataError
from pipelines.stages import load_data
from vae.config import ConfigError

GRAY_PALETTE = [0, 0, 0, 128, 128, 128] + [0] * (256 * 3 - 6)


def _image(mode: str, size: tuple[int, int], fmt: str = "PNG", **save) -> bytes:
    """An encoded image of PIL `size` (W, H)."""
    img = Image.new(mode, size, 1 if mode == "P" else None)
    if mode == "P":
        img.putpalette(save.pop("palette", GRAY_PALETTE))
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def _folder(root: Path, files: dict[str, bytes]) -> Path:
    for rel, blob in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(blob)
    return root


def _cfg(*overrides: str, **settings):
    return load_config(None, list(overrides), settings=settings or None)


@pytest.fixture(scope="module")
def gray28(tmp_path_factory) -> Path:
    """Two classes of 28x28 grayscale PNGs."""
    files = {f"{c}/{i}.png": _image("L", (28, 28)) for c in ("a", "b") for i in range(4)}
    return _folder(tmp_path_factory.mktemp("gray28"), files)


# ------------------------------------------------------------------------------- sources


def test_every_source_has_a_shape():
    assert set(FIXED_SHAPES) | set(HEADER_READERS) == set(SOURCES)
    assert not set(FIXED_SHAPES) & set(HEADER_READERS)


def test_folder_of_gray_28x28(gray28):
    cfg = _cfg("data.source=folder", f"data.path={gray28}")
    assert cfg.infer_from_data == ("image_size", "channels", "recon_loss")
    note = resolve_data_shape(cfg)
    assert note == (
        "model.image_size=[28, 28] and model.channels=1 inferred from the data (set them to override); "
        "model.recon_loss=bce chosen for grayscale [0, 1] data (set it to override)"
    )
    assert cfg.model.image_size == (28, 28) and cfg.model.channels == 1
    assert load_data(cfg).images.shape == (8, 1, 28, 28)


def test_folder_of_rgb_12x10_jpeg_and_png(tmp_path):
    files = {
        "cat/a.jpg": _image("RGB", (10, 12), "JPEG"),
        "cat/b.png": _image("RGB", (10, 12)),
        "dog/c.png": _image("RGBA", (10, 12)),
        "dog/d.png": _image("L", (10, 12)),  # one colour image is enough for 3 channels
    }
    cfg = _cfg("data.source=folder", f"data.path={_folder(tmp_path, files)}")
    resolve_data_shape(cfg)
    assert cfg.model.image_size == (12, 10) and cfg.model.channels == 3
    assert load_data(cfg).images.shape == (4, 3, 12, 10)


def test_parquet_hf_layout_rgb_16x16(tmp_path):
    blobs = [_image("RGB", (16, 16)) for _ in range(3)] + [_image("RGB", (20, 16))]
    image = pa.array(
        [{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(blobs)],
        type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    pq.write_table(pa.table({"image": image, "label": pa.array([0, 1, 0, 1])}), tmp_path / "train.parquet")
    cfg = _cfg("data.source=parquet", f"data.path={tmp_path}")
    resolve_data_shape(cfg)
    assert cfg.model.image_size == (16, 16) and cfg.model.channels == 3
    assert load_data(cfg).images.shape == (4, 3, 16, 16)  # the 20-wide one resized


def test_parquet_errors_are_the_loaders(tmp_path):
    image = pa.array([{"bytes": b"broken", "path": "x.png"}], type=pa.struct([("bytes", pa.binary())]))
    pq.write_table(pa.table({"image": image, "label": pa.array([0])}), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"corrupt image in '.*bad.parquet' row 0: cannot identify"):
        resolve_data_shape(_cfg("data.source=parquet", f"data.path={tmp_path / 'bad.parquet'}"))
    with pytest.raises(DataError, match="'lbl' not found"):
        resolve_data_shape(_cfg("data.source=parquet", f"data.path={tmp_path}", "data.label_column=lbl"))


def test_fixed_shape_sources_need_no_files():
    assert infer_data_shape(load_config().data) == ((8, 8), 1)
    cfg = load_config()  # the digits default job still gives 8x8x1
    resolve_data_shape(cfg)
    assert cfg.model.image_size == (8, 8) and cfg.model.channels == 1
    expected = {"mnist": ((28, 28), 1), "fashion-mnist": ((28, 28), 1), "cifar10": ((32, 32), 3)}
    for source, shape in expected.items():
        cfg = _cfg(f"data.source={source}", "data.path=/nonexistent")
        resolve_data_shape(cfg)
        assert (cfg.model.image_size, cfg.model.channels) == shape, source


# ------------------------------------------------------------------------------- explicit values win


def test_explicit_values_win(gray28, tmp_path):
    cfg = _cfg("data.source=folder", f"data.path={gray28}", "model.image_size=[8,8]")
    assert cfg.infer_from_data == ("channels", "recon_loss")
    assert resolve_data_shape(cfg).startswith(
        "model.channels=1 inferred from the data (set it to override); "
    )
    assert cfg.model.image_size == (8, 8)
    assert load_data(cfg).images.shape == (8, 1, 8, 8)

    cfg = _cfg(data={"source": "folder", "path": str(gray28)}, model={"image_size": [16, 16], "channels": 3})
    assert resolve_data_shape(cfg) == (
        "model.recon_loss=gaussian chosen for colour or non-[0, 1] data (set it to override)"
    )
    assert cfg.model.recon_loss == "gaussian"
    explicit = _cfg(
        data={"source": "folder", "path": str(gray28)}, model={"channels": 3, "recon_loss": "bce"}
    )
    explicit.model = dataclasses.replace(explicit.model, image_size=(16, 16))
    explicit.infer_from_data = ("image_size",)
    resolve_data_shape(explicit)
    assert explicit.model.recon_loss == "bce"  # an explicit likelihood wins
    assert load_data(cfg).images.shape == (8, 3, 16, 16)

    f = tmp_path / "c.yaml"
    data = {"source": "folder", "path": str(gray28)}
    f.write_text(yaml.safe_dump({"data": data, "model": {"channels": 3}}))
    cfg = load_config(f)
    resolve_data_shape(cfg)
    assert cfg.model.image_size == (28, 28) and cfg.model.channels == 3


# ------------------------------------------------------------------------------- mixed data


def test_mixed_sizes_use_the_most_common_and_ties_the_first(tmp_path):
    files = {
        "a/1.png": _image("L", (20, 20)),
        "a/2.png": _image("L", (30, 24)),
        "b/3.png": _image("L", (30, 24)),
        "b/4.png": _image("L", (16, 16)),
    }
    cfg = _cfg("data.source=folder", f"data.path={_folder(tmp_path / 'most', files)}")
    resolve_data_shape(cfg)
    assert cfg.model.image_size == (24, 30)
    assert load_data(cfg).images.shape == (4, 1, 24, 30)

    files = {"a/1.png": _image("L", (20, 10)), "b/2.png": _image("L", (10, 20))}
    cfg = _cfg("data.source=folder", f"data.path={_folder(tmp_path / 'tie', files)}")
    resolve_data_shape(cfg)
    assert cfg.model.image_size == (10, 20)
    limited = _cfg("data.source=folder", f"data.path={tmp_path / 'most'}", "data.limit=2")
    resolve_data_shape(limited)  # only the images that are loaded count
    assert limited.model.image_size == (20, 20)
    spread = folder_headers(DataConfig(source="folder", path=str(tmp_path / "most")), 2)
    assert [h.size for h in spread] == [(20, 20), (24, 30)]  # files 0 and 2 of 4


def test_palettes_orientation_and_long_headers(tmp_path):
    colour_palette = [0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: decoded as 10 wide, 12 high
    big_text = PngImagePlugin.PngInfo()
    big_text.add_text("comment", "x" * 200_000)  # header longer than the first bytes fetched
    cases = {
        "gray_palette": ({"a/p.png": _image("P", (12, 12), transparency=0)}, ((12, 12), 1)),
        "colour_palette": ({"a/p.png": _image("P", (12, 12), palette=colour_palette)}, ((12, 12), 3)),
        "rotated": ({"a/r.jpg": _image("RGB", (12, 10), "JPEG", exif=exif.tobytes())}, ((12, 10), 3)),
        "long_header": ({"a/t.png": _image("LA", (9, 11), pnginfo=big_text)}, ((11, 9), 1)),
    }
    for name, (files, shape) in cases.items():
        cfg = _cfg("data.source=folder", f"data.path={_folder(tmp_path / name, files)}")
        resolve_data_shape(cfg)
        assert (cfg.model.image_size, cfg.model.channels) == shape, name
        assert load_data(cfg).images.shape[1:] == (shape[1], *shape[0]), name


def test_memory_and_s3_filesystems(tmp_path, s3):
    files = {"a/1.jpg": _image("RGB", (10, 12), "JPEG"), "b/2.png": _image("L", (10, 12))}
    root = f"/shape-{uuid.uuid4().hex[:8]}"
    mem = fsspec.filesystem("memory")
    try:
        for rel, blob in files.items():
            mem.pipe_file(f"{root}/{rel}", blob)
        assert infer_data_shape(DataConfig(source="folder", path=f"memory://{root}")) == ((12, 10), 3)
    finally:
        mem.rm(root, recursive=True)

    bucket = s3.new_bucket()
    s3fs_ = fsspec.filesystem("s3", **s3.storage_options())
    for rel, blob in files.items():
        s3fs_.pipe_file(f"{bucket}/imgs/{rel}", blob)
    s3fs_.pipe_file(f"{bucket}/imgs/b/empty.png", b"")
    path = f"s3://{bucket}/imgs"
    with pytest.raises(DataError, match=r"corrupt image 's3://.*/imgs/b/empty.png': cannot identify"):
        infer_data_shape(DataConfig(source="folder", path=path))  # env endpoint
    s3fs_.rm(f"{bucket}/imgs/b/empty.png")
    assert infer_data_shape(DataConfig(source="folder", path=path)) == ((12, 10), 3)


def test_errors(tmp_path):
    small = _folder(tmp_path / "small", {"a/1.png": _image("L", (6, 5))})
    too_small = r"model.image_size: .* are 5x6, below .* set model.image_size=\[8, 8\]"
    with pytest.raises(ConfigError, match=too_small):
        resolve_data_shape(_cfg("data.source=folder", f"data.path={small}"))
    resolve_data_shape(_cfg("data.source=folder", f"data.path={small}", "model.image_size=[8,8]"))  # fine

    bad = _folder(tmp_path / "bad", {"a/ok.png": _image("L", (8, 8)), "a/zz.png": b"not an image"})
    with pytest.raises(DataError, match=r"corrupt image '.*a/zz.png': cannot identify .*remove or replace"):
        resolve_data_shape(_cfg("data.source=folder", f"data.path={bad}"))
    with pytest.raises(DataError, match="does not exist: check the path or URL"):
        resolve_data_shape(_cfg("data.source=folder", f"data.path={tmp_path / 'nope'}"))


# ------------------------------------------------------------------------------- the pipeline


def test_resolved_config_round_trips_and_keys_the_training_cache(gray28):
    from pipelines.training_cache import training_inputs as _training_inputs

    cfg = _cfg("data.source=folder", f"data.path={gray28}")
    resolve_data_shape(cfg)
    saved = yaml.safe_load(config_yaml(cfg))
    assert saved["model"]["image_size"] == [28, 28] and "infer_from_data" not in saved
    again = config_from_dict(saved)
    assert again == cfg and again.infer_from_data == ()
    assert resolve_data_shape(again) is None and resolve_data_shape(cfg) is None
    assert _training_inputs(cfg)["model"]["image_size"] == [28, 28]


def test_cli_train_and_evaluate_use_the_inferred_shape(gray28, tmp_path, capsys, single_torch_thread):
    out = tmp_path / "job"
    common = [f"output_dir={out}", "data.source=folder", f"data.path={gray28}"]
    args = [*common, "train.epochs=1", "train.batch_size=4", "train.backend=local", "train.val_fraction=0.25"]
    args += ["train.min_steps=0"]
    args += ["model.hidden_channels=[4,8]", "model.latent_dim=2"]
    assert main(["train", *args]) == 0
    printed = capsys.readouterr().out
    assert "model.image_size=[28, 28] and model.channels=1 inferred from the data" in printed
    assert "8 images of 1x28x28" in printed
    meta = json.loads((out / "model" / "config.json").read_text())
    assert meta["model"]["image_size"] == [28, 28] and meta["model"]["channels"] == 1
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"]["image_size"] == [28, 28] and saved["model"]["channels"] == 1

    assert main(["evaluate", *common, "train.val_fraction=0.25", "model.hidden_channels=[4,8]"]) == 0
    assert "inferred from the data" in capsys.readouterr().out
