"""The four usefulness figures, each a plain function of classifiers and image pools.

- label fidelity: does a real-trained classifier give synthetic images the label they were made for?
- CAS (Ravuri & Vinyals 2019): a classifier trained on synthetic images only, tested on real
  held-out images, relative to the same recipe trained on the real training images.
- augmentation gain: real vs real + synthetic, with and without classic augmentation, same steps.
- Fréchet distance in the real-trained classifier's feature space (no pretrained Inception offline),
  next to the same distance between the real training and held-out images (the floor).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipelines.usefulness.classifier import Pool, SmallCNN, predict


@dataclass
class Fidelity:
    """Label fidelity of synthetic images under a real-trained classifier.

    Args:
        overall: share of images whose predicted class is the requested one.
        per_class: that share for each requested class (index -> share).
        confidence: mean probability the classifier gives the requested class.
    """

    overall: float
    per_class: dict[int, float]
    confidence: float


def label_fidelity(judge: SmallCNN, synthetic: Pool) -> Fidelity:
    """Score `synthetic` (images in [0, 1], requested labels) with the real-trained `judge`."""
    probs, _ = predict(judge, synthetic.images)  # (N, K)
    y = synthetic.labels
    hit = (probs.argmax(dim=1) == y).float()  # (N,)
    conf = probs.gather(1, y[:, None]).squeeze(1)  # (N,) probability of the requested class
    classes = sorted(int(k) for k in y.unique())
    return Fidelity(
        overall=float(hit.mean()),
        per_class={k: float(hit[y == k].mean()) for k in classes},
        confidence=float(conf.mean()),
    )


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a (N, F) and b (M, F).

    ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), as in FID, in float64. The trace of the
    matrix square root is the sum of the square roots of the eigenvalues of S_a^(1/2) S_b S_a^(1/2)
    (symmetric, positive semi-definite), which needs only `numpy.linalg.eigh`.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"Fréchet distance needs at least 2 images per set, got {len(a)} and {len(b)}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T  # S_a^(1/2)
    inner = root_a @ cov_b @ root_a
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)).sum()
    diff = mu_a - mu_b
    value = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_sqrt
    return float(max(value, 0.0))


def features(judge: SmallCNN, images: torch.Tensor) -> np.ndarray:
    """The judge's penultimate features (N, F) as float64 numpy."""
    _, feats = predict(judge, images)
    return feats.double().numpy()


@dataclass
class Spread:
    """Mean and spread (half the max - min range) of one condition's accuracies over seeds."""

    runs: list[float]

    @property
    def mean(self) -> float:
        return float(np.mean(self.runs))

    @property
    def spread(self) -> float:
        return float((max(self.runs) - min(self.runs)) / 2) if len(self.runs) > 1 else 0.0


__all__ = ["Fidelity", "Spread", "features", "frechet_distance", "label_fidelity"]
