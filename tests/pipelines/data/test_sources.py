"""`load_images` on the built-in sources: scikit-learn's digits and MNIST through torchvision.

The folder, Parquet and CIFAR-10 sources have their own files (test_folder, test_parquet, test_cifar).
"""

from __future__ import annotations

import pytest
import torch

from pipelines.data import LOADERS, SOURCES, DataConfig, load_images
from pipelines.errors import DataError
from tests.pipelines.data.imagetree import GRAY8
from vae.config import VAEConfig


def test_registry_covers_every_source():
    assert set(LOADERS) == set(SOURCES)


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


def test_digits_resized_and_rgb():
    s = load_images(DataConfig(limit=50), VAEConfig(image_size=(16, 16), channels=3))
    assert s.images.shape == (50, 3, 16, 16)
    assert torch.equal(s.images[:, 0], s.images[:, 2])  # grey repeated over RGB
    assert 0.0 <= s.images.min().item() and s.images.max().item() <= 1.0


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
