"""`ImageSet`: labelled images in the model's range, with stable per-image ids."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from pipelines.data.split import split_indices, split_sizes

if TYPE_CHECKING:
    from pipelines.data.split import StreamedSource


@dataclass
class ImageSet:
    """A labelled set of images, ready for the model.

    Args:
        images: float32 (N, C, H, W), already in the model's range (see `vae.ranges.to_model_range`).
        labels: int64 (N,) class indices into `class_names`.
        class_names: name of each class; `len(class_names)` is the number of classes.
        ids: a stable id per image (e.g. "mnist/train/123" or a file's path relative to the source
            root); generated variants refer to their source image by it.
        chunks: (N,) int64 non-decreasing id of the chunk each image was read in (a Parquet row
            group; see `pipelines.data.order`); None: one chunk per image.
        source_fingerprint: for a bounded sample of a streamed source, the whole source's listing
            fingerprint (`pipelines.data.index`), which `fingerprint()` returns instead of hashing
            the sample's pixels.
        drawn_split: for a bounded sample of a streamed source: (val_fraction, seed, (N,) bool
            held-out mask) of the split the whole source was split with; `split` keeps it.
        stream: for such a sample, the whole source (`pipelines.data.split.StreamedSource`): Ray Train streams
            it instead of training on the sample.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    ids: list[str]
    chunks: torch.Tensor | None = None
    source_fingerprint: str | None = None
    drawn_split: tuple[float, int, torch.Tensor] | None = None
    stream: StreamedSource | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != torch.float32:
            raise ValueError(
                f"ImageSet.images must be float32 (N, C, H, W), got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        n = self.images.shape[0]
        if self.labels.shape != (n,) or self.labels.dtype != torch.int64:
            raise ValueError(
                f"ImageSet.labels must be int64 ({n},), got {self.labels.dtype} {tuple(self.labels.shape)}"
            )
        if len(self.ids) != n:
            raise ValueError(f"ImageSet.ids has {len(self.ids)} entries for {n} images")
        if self.chunks is not None and self.chunks.shape != (n,):
            raise ValueError(f"ImageSet.chunks must be ({n},), got {tuple(self.chunks.shape)}")
        self.class_names = [str(c) for c in self.class_names]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def source_size(self) -> int:
        """Images in the whole source: `len(self)`, or the streamed source's count for a sample."""
        return len(self) if self.stream is None else len(self.stream)

    def source_split_sizes(self, val_fraction: float) -> tuple[int, int]:
        """(train, held-out) images of the whole source's split: the streamed source's for a sample.

        Raises:
            ValueError: a fraction outside [0, 1), or fewer than 2 images to split.
        """
        if self.stream is not None:
            return len(self.stream.train_items), len(self.stream.val_items)
        return split_sizes(len(self), val_fraction)

    @property
    def num_classes(self) -> int:
        """Number of classes (`len(class_names)`)."""
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def fingerprint(self) -> str:
        """Content hash of the images, labels and class names (not the ids).

        Returns:
            sha256 hex digest; equal for equal data wherever it was loaded from, so it can key a
            cache of trained models across runs. A sample of a streamed source gives the source's
            listing fingerprint (`source_fingerprint`).
        """
        if self.source_fingerprint is not None:
            return self.source_fingerprint
        h = hashlib.sha256()
        header = {"shape": list(self.images.shape), "classes": self.class_names}
        h.update(json.dumps(header, sort_keys=True).encode())
        h.update(self.images.detach().cpu().contiguous().numpy().tobytes())  # (N, C, H, W) float32
        h.update(self.labels.detach().cpu().contiguous().numpy().tobytes())  # (N,) int64
        return h.hexdigest()

    def subset(self, indices: Sequence[int] | torch.Tensor) -> ImageSet:
        """The images at `indices`, in that order.

        Args:
            indices: integer positions (a sequence or a 1-D tensor).

        Returns:
            A new `ImageSet` (copied tensors) with the same class names.
        """
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        return ImageSet(
            images=self.images[idx].clone(),
            labels=self.labels[idx].clone(),
            class_names=list(self.class_names),
            ids=[self.ids[i] for i in idx.tolist()],
            chunks=None if self.chunks is None else self.chunks[idx].clone(),
        )

    def split(self, val_fraction: float, seed: int = 0) -> tuple[ImageSet, ImageSet]:
        """Random train/validation split, the same for the same data, fraction and seed.

        Args:
            val_fraction: share of images for validation, in [0, 1). When > 0, validation gets at
                least one image (and training keeps at least one).
            seed: seed of the shuffle that picks the validation images.

        Returns:
            (train, val): disjoint subsets that together hold every image, each in source order.

        Raises:
            ValueError: a bounded sample (`drawn_split`) asked for another split than it was drawn with.
        """
        if self.drawn_split is not None:
            fraction, drawn_seed, heldout = self.drawn_split
            if (float(val_fraction), int(seed)) != (float(fraction), int(drawn_seed)):
                raise ValueError(
                    f"this sample of a streamed source was drawn for train.val_fraction={fraction} and "
                    f"train.seed={drawn_seed}, not {val_fraction} and {seed}: load it again with those"
                )
            keep, held = torch.nonzero(~heldout).flatten(), torch.nonzero(heldout).flatten()
            return self.subset(keep), self.subset(held)
        train_idx, val_idx = split_indices(len(self), val_fraction, seed)
        return self.subset(torch.from_numpy(train_idx)), self.subset(torch.from_numpy(val_idx))


__all__ = ["ImageSet"]
