"""The judge: the recipe's classifier trained on the real training split, saved next to the model.

It labels synthetic images for the usefulness report (label fidelity, Fréchet features) and, when
curation is on, decides in the sampling actors which candidates keep their requested label.

Layout (`<model_dir>/judge/`, local or fsspec): `judge.json` (architecture, classes, recipe, the
fingerprint of the data it was trained on, the weights' sha256) and `judge.safetensors`. Loading
never unpickles; a judge trained on other data or with another recipe is retrained, not reused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from pipelines.errors import ModelError
from pipelines.storage import join, open_url
from pipelines.usefulness.classifier import Pool, Recipe, SmallCNN, train_classifier

JUDGE_DIR = "judge"
JUDGE_CONFIG = "judge.json"
JUDGE_WEIGHTS = "judge.safetensors"


class JudgeError(ModelError):
    """The saved judge is missing or does not fit; the message names the file and the fix."""


@dataclass
class JudgeInfo:
    """What a saved judge is: enough to rebuild it and to know whether it is still valid."""

    channels: int
    image_size: tuple[int, int]
    class_names: list[str]
    recipe: dict[str, Any]
    data_fingerprint: str
    weights_sha256: str = ""


def judge_dir(model_dir: str) -> str:
    """Where the judge of the model at `model_dir` lives."""
    return join(model_dir, JUDGE_DIR)


def train_judge(
    train: Pool, class_names: list[str], recipe: Recipe, fingerprint: str
) -> tuple[SmallCNN, JudgeInfo]:
    """Train the recipe's classifier (seed 0, no augmentation) on the real training images."""
    model = train_classifier(train, None, len(class_names), recipe, seed=0)
    c, h, w = train.images.shape[1:]
    return model, JudgeInfo(c, (h, w), list(class_names), asdict(recipe), fingerprint)


def save_judge(model: SmallCNN, info: JudgeInfo, model_dir: str, storage_options: dict | None = None) -> str:
    """Write the judge under `<model_dir>/judge/` (weights first, config last); returns its URL."""
    url = judge_dir(model_dir)
    fs, root = open_url(url, storage_options)
    fs.makedirs(root, exist_ok=True)
    blob = st_save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
    info.weights_sha256 = hashlib.sha256(blob).hexdigest()
    fs.pipe_file(join(root, JUDGE_WEIGHTS), blob)
    fs.pipe_file(join(root, JUDGE_CONFIG), json.dumps(asdict(info), indent=2).encode())
    return url


def read_judge_info(model_dir: str, storage_options: dict | None = None) -> JudgeInfo | None:
    """The saved judge's description, or None when there is none (or it is unreadable)."""
    fs, root = open_url(judge_dir(model_dir), storage_options)
    try:
        data = json.loads(fs.cat_file(join(root, JUDGE_CONFIG)))
        data["image_size"] = tuple(data["image_size"])
        return JudgeInfo(**data)
    except (FileNotFoundError, json.JSONDecodeError, TypeError, KeyError):
        return None


def load_judge(model_dir: str, storage_options: dict | None = None, map_location: str = "cpu") -> SmallCNN:
    """Rebuild the saved judge (eval mode); `JudgeError` if it is missing or corrupt."""
    info = read_judge_info(model_dir, storage_options)
    where = judge_dir(model_dir)
    if info is None:
        raise JudgeError(
            f"no judge classifier at '{where}': run the pipeline's generate stage with "
            "report.enabled=true or generate.curation_threshold set, which trains one"
        )
    fs, root = open_url(where, storage_options)
    blob = fs.cat_file(join(root, JUDGE_WEIGHTS))
    if hashlib.sha256(blob).hexdigest() != info.weights_sha256:
        raise JudgeError(f"corrupt judge weights under '{where}': delete the folder to retrain it")
    model = SmallCNN(info.channels, len(info.class_names), info.image_size, info.recipe["width"])
    model.load_state_dict(st_load(blob), strict=True)
    return model.to(map_location).eval()


def ensure_judge(
    model_dir: str,
    train: Pool,
    class_names: list[str],
    recipe: Recipe,
    fingerprint: str,
    storage_options: dict | None = None,
) -> tuple[SmallCNN, bool]:
    """The saved judge if it was trained on this data with this recipe, else a new one (saved).

    Returns:
        (judge, reused).
    """
    info = read_judge_info(model_dir, storage_options)
    same = info is not None and (
        info.data_fingerprint == fingerprint
        and info.recipe == asdict(recipe)
        and info.class_names == class_names
    )
    if same:
        try:
            return load_judge(model_dir, storage_options), True
        except (JudgeError, OSError, RuntimeError):
            pass  # retrain below
    model, new_info = train_judge(train, class_names, recipe, fingerprint)
    save_judge(model, new_info, model_dir, storage_options)
    return model, False


__all__ = [
    "JUDGE_DIR",
    "JudgeError",
    "JudgeInfo",
    "ensure_judge",
    "judge_dir",
    "load_judge",
    "read_judge_info",
    "save_judge",
    "train_judge",
]
