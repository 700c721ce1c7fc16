"""Pictures for people: a sample/reconstruction grid and a loss curve, as PNG files."""

from __future__ import annotations

import io
from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw
from torchvision.utils import make_grid

from vae.model import VAE
from vae.ranges import to_unit_range

CELL_PX = 48  # each image is upscaled (nearest) to at least this many pixels on its short side


def _to_pil(grid01: torch.Tensor, scale: int) -> Image.Image:
    arr = (grid01.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()  # (H, W, C)
    img = Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST)


@torch.no_grad()
def sample_grid(
    model: VAE,
    real: torch.Tensor,
    real_labels: torch.Tensor,
    class_names: Sequence[str],
    per_row: int = 10,
    seed: int = 0,
) -> Image.Image:
    """A labelled grid: prior samples (one row per class for a conditional model), then real
    images with their reconstructions underneath.

    Args:
        model: the trained VAE (eval mode is set here).
        real: held-out images (N, C, H, W) in the model's range; the first `per_row` are shown.
        real_labels: (N,) their labels.
        class_names: names of the classes (row captions of a conditional model).
        per_row: images per row.
        seed: seeds the prior draws.

    Returns:
        The grid as a PIL image.
    """
    model.eval()
    device = model.device
    gen = torch.Generator(device=device).manual_seed(seed)
    rows: list[tuple[str, torch.Tensor]] = []
    if model.cfg.conditional:
        for k, name in enumerate(class_names[: model.cfg.num_classes]):
            labels = torch.full((per_row,), k, dtype=torch.long, device=device)
            rows.append((f"sample {name}", model.sample(per_row, labels, generator=gen).images))
    else:
        for r in range(4):
            rows.append((f"samples {r + 1}", model.sample(per_row, generator=gen).images))
    x = real[:per_row].to(device)
    y = real_labels[:per_row].to(device) if model.cfg.conditional else None
    rows.append(("real", x))
    rows.append(("reconstruction", model.reconstruct(x, y)))

    return labelled_rows([(c, to_unit_range(t, model.cfg).cpu()) for c, t in rows], per_row)


def labelled_rows(rows: Sequence[tuple[str, torch.Tensor]], per_row: int, label_w: int = 110) -> Image.Image:
    """Rows of images (each (n, C, H, W) in [0, 1]) with a caption on the left of each row."""
    h, w = rows[0][1].shape[-2:]
    scale = max(1, CELL_PX // min(h, w))
    pad = 2
    tiles = [_to_pil(make_grid(t.float(), nrow=per_row, padding=pad), scale) for _, t in rows]
    width = label_w + max(t.width for t in tiles)
    canvas = Image.new("RGB", (width, sum(t.height for t in tiles)), "white")
    draw = ImageDraw.Draw(canvas)
    top = 0
    for (caption, _), tile in zip(rows, tiles, strict=True):
        canvas.paste(tile.convert("RGB"), (label_w, top))
        draw.text((4, top + tile.height // 2 - 6), caption, fill="black")
        top += tile.height
    return canvas


def loss_curve(history: Sequence[dict[str, float]]) -> bytes:
    """PNG bytes of train/validation loss per epoch (from the metrics history rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(epochs, [row["train_loss"] for row in history], label="train loss")
    if any("val_loss" in row for row in history):
        ax.plot(epochs, [row.get("val_loss", float("nan")) for row in history], label="held-out loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss per image (recon + beta*KL)")
    ax.grid(alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    """Encode a PIL image as PNG bytes."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
