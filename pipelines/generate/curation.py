"""Curation: keep a sampled image only when the real-trained judge agrees with its requested label.

Rejected rows are redrawn from the shard's own generator, round after round, so a shard still holds
exactly the rows it was asked for, and the result depends only on (seed, shard index): the same
bytes whatever the number of actors. The judge scores the image as it will be stored (rounded to
uint8). A row still rejected after `max_rounds` keeps its most confident candidate and is counted
as a fallback (reported in the manifest), so a hard class never stalls the job.

The bytes are the same whatever the number of actors on one kind of device; a CPU and a GPU decoder
may judge a borderline candidate differently, and then the rest of that shard differs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch

from pipelines.usefulness.classifier import SmallCNN
from vae.model import VAE
from vae.ranges import to_uint8


@dataclass
class CurationCounts:
    """Per class index: candidates decoded, candidates accepted, rows kept below the threshold."""

    tried: Counter[int] = field(default_factory=Counter)
    accepted: Counter[int] = field(default_factory=Counter)
    fallback: Counter[int] = field(default_factory=Counter)

    def update(self, other: CurationCounts) -> None:
        self.tried.update(other.tried)
        self.accepted.update(other.accepted)
        self.fallback.update(other.fallback)


@torch.inference_mode()
def label_confidence(
    model: VAE, judge: SmallCNN, z: torch.Tensor, labels: torch.Tensor, batch: int
) -> torch.Tensor:
    """The judge's probability of `labels` (n,) for the images decoded from z (n, D), as stored."""
    out = []
    judge_device = next(judge.parameters()).device
    for lo in range(0, len(z), batch):
        zb = z[lo : lo + batch].to(model.device, model.fc_dtype)  # (b, D)
        yb = labels[lo : lo + batch]
        pixels = to_uint8(model.decode(zb, yb.to(model.device)), model.cfg)  # (b, C, H, W) as stored
        x01 = pixels.float() / 255.0
        probs = judge(x01.to(judge_device)).softmax(dim=1)  # (b, K)
        out.append(probs.gather(1, yb.to(judge_device)[:, None]).squeeze(1).float().cpu())
    return torch.cat(out)


@torch.inference_mode()
def curated_latents(
    model: VAE,
    judge: SmallCNN,
    labels: torch.Tensor,
    gen: torch.Generator,
    temperature: float,
    threshold: float,
    batch: int,
    max_rounds: int,
) -> tuple[torch.Tensor, CurationCounts]:
    """Latents (n, D) on the CPU whose images the judge gives their label with >= `threshold`.

    Args:
        model: the conditional VAE.
        judge: the real-trained classifier.
        labels: (n,) requested class of each row.
        gen: the shard's CPU generator (all draws come from it, in a fixed order).
        temperature: sampling temperature (see `VAE.draw_latents`).
        threshold: minimum judge probability of the requested class.
        batch: decoder batch size.
        max_rounds: redraw rounds before falling back to the best candidate.

    Returns:
        (z, counts).
    """
    n, d = len(labels), model.cfg.latent_dim
    z = torch.zeros((n, d))
    best = torch.full((n,), -1.0)
    counts = CurationCounts()
    pending = torch.arange(n)  # rows without an accepted candidate yet
    for _ in range(max_rounds):
        if len(pending) == 0:
            break
        eps = torch.randn((len(pending), d), generator=gen)  # (m, D)
        y = labels[pending]
        cand = model.draw_latents(eps, y, temperature).float().cpu()  # (m, D)
        conf = label_confidence(model, judge, cand, y, batch)  # (m,)
        better = conf > best[pending]
        z[pending[better]] = cand[better]
        best[pending[better]] = conf[better]
        ok = conf >= threshold
        counts.tried.update(y.tolist())
        counts.accepted.update(y[ok].tolist())
        pending = pending[~ok]
    counts.fallback.update(labels[pending].tolist())
    return z, counts


__all__ = ["CurationCounts", "curated_latents", "label_confidence"]
