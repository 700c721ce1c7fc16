"""A small class-folder tree of real images (PNG and JPEG, mixed sizes and modes) and the same images
as a Hugging Face Parquet table, for the folder and Parquet source tests: both must load alike."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipelines.data import ImageSet
from vae.config import VAEConfig

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


def encode(mode: str, size: tuple[int, int], colour, fmt: str) -> bytes:
    if mode == "P":
        img = Image.new("P", size, 1)
        img.putpalette([0, 0, 0, 128, 128, 128] + [0] * (256 * 3 - 6))
        img.info["transparency"] = 0
    else:
        img = Image.new(mode, size, colour)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"transparency": 0} if mode == "P" else {}))
    return buf.getvalue()


def tree_files() -> dict[str, bytes]:
    """TREE encoded, with files no loader may take: a root file, a non-image, a hidden folder."""
    files = {}
    for rel, mode, size, colour in TREE:
        fmt = "JPEG" if rel.lower().endswith((".jpg", ".jpeg")) else "PNG"
        files[rel] = encode(mode, size, colour, fmt)
    files["README.txt"] = b"files at the root belong to no class"
    files["cat/notes.txt"] = b"not an image"
    files[".hidden/x.png"] = files["cat/a.png"]
    return files


def write_local(root: Path, files: dict[str, bytes], empty: tuple[str, ...] = ()) -> Path:
    """Write `files` (relative path -> bytes) and the empty folders `empty` under `root`."""
    for rel, blob in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(blob)
    for name in empty:
        (root / name).mkdir(parents=True)
    return root


def check_tree(s: ImageSet, model: VAEConfig) -> None:
    assert s.class_names == ["cat", "dog", "emu"]
    assert s.ids == EXPECTED_IDS
    assert s.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert s.images.shape == (6, *model.image_shape)


def hf_table(with_metadata: bool = True, n: int = 6) -> pa.Table:
    files = tree_files()
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


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()
