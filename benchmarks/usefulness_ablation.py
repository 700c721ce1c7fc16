"""Ablation behind the generator's defaults: which VAE variant and sampling helps a classifier most?

Trains VAE variants (`vae/` only, in this process) on N MNIST images per class (`../shared/data`),
draws 5,000 labelled synthetic images from each, and scores them with the usefulness recipe
(`pipelines.usefulness`): label fidelity under a real-trained judge, CAS, and the gain of
real + synthetic over the better of real / real + classic augmentation (one seed per condition,
tested on the first 2,000 MNIST test images). Cheaper and noisier than `usefulness.py`, which
measures the chosen defaults end to end; use it to compare variants, not to quote a product figure.

    python benchmarks/usefulness_ablation.py --per-class 20 --steps 2000
    python benchmarks/usefulness_ablation.py --per-class 100 --steps 3000 --variants film,fitted,bce
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from pipelines.usefulness.classifier import Pool, Recipe, accuracy, train_classifier
from pipelines.usefulness.metrics import label_fidelity
from vae.config import VAEConfig
from vae.model import VAE
from vae.training import iterate_batches, make_optimizer, train_step

RAW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "MNIST" / "raw"
#: conditioning, latent prior, likelihood of each variant (name "conditioning,prior,likelihood").
VARIANTS = ("concat,standard,bce", "film,fitted,gaussian", "film,fitted,bce")


def _idx(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(raw[3])]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * raw[3]).reshape(dims)


def mnist(per_class: int, seed: int = 0, test_n: int = 2000) -> tuple[Pool, Pool]:
    """(N per class of the training split, the first `test_n` test images), in [0, 1]."""
    x, y = _idx(RAW / "train-images-idx3-ubyte"), _idx(RAW / "train-labels-idx1-ubyte")
    xt, yt = _idx(RAW / "t10k-images-idx3-ubyte"), _idx(RAW / "t10k-labels-idx1-ubyte")
    rng = np.random.default_rng(seed)
    sel = np.concatenate([rng.choice(np.flatnonzero(y == k), per_class, replace=False) for k in range(10)])

    def pool(images: np.ndarray, labels: np.ndarray) -> Pool:
        return Pool(
            torch.tensor(images / 255.0, dtype=torch.float32)[:, None], torch.tensor(labels.astype(np.int64))
        )

    return pool(x[sel], y[sel]), pool(xt[:test_n], yt[:test_n])


def train_vae(train: Pool, cfg: VAEConfig, steps: int, batch: int = 128, lr: float = 2e-3) -> VAE:
    torch.manual_seed(0)
    model = VAE(cfg)
    opt = make_optimizer(model, lr)
    gen = torch.Generator().manual_seed(0)
    done = 0
    while done < steps:
        for x, y in iterate_batches(train.images, train.labels, batch, shuffle=True, generator=gen):
            train_step(model, opt, x, y)
            done += 1
            if done >= steps:
                break
    if cfg.latent_prior == "fitted":
        model.fit_latent_prior(train.images, train.labels)
    return model.eval()


@torch.no_grad()
def sample(model: VAE, train: Pool, n: int, mode: str, temperature: float) -> Pool:
    """n labelled images: from the sampling prior ("prior") or around real posteriors ("variant")."""
    gen = torch.Generator().manual_seed(0)
    if mode == "prior":
        y = torch.arange(n) % 10
        z = model.draw_latents(torch.randn(n, model.cfg.latent_dim, generator=gen), y, temperature)
    else:
        idx = torch.arange(len(train.images)).repeat(math.ceil(n / len(train.images)))[:n]
        y = train.labels[idx]
        post = model.encode(train.images[idx], y)
        z = post.mu + temperature * torch.exp(0.5 * post.logvar) * torch.randn(post.mu.shape, generator=gen)
    return Pool(model.decode(z, y).clamp(0, 1), y)


def score(train: Pool, test: Pool, synthetic: Pool, recipe: Recipe, base: tuple[float, float], judge) -> dict:
    real, real_classic = base
    mixed = accuracy(train_classifier(train, synthetic, 10, recipe, 0), test)
    mixed_classic = accuracy(train_classifier(train, synthetic, 10, recipe, 0, augment=True), test)
    synth_only = accuracy(train_classifier(None, synthetic, 10, recipe, 0), test)
    return {
        "real": real,
        "real+classic": real_classic,
        "real+synth": mixed,
        "real+synth+classic": mixed_classic,
        "gain": max(mixed, mixed_classic) - max(real, real_classic),
        "label_fidelity": label_fidelity(judge, synthetic).overall,
        "cas": synth_only / real,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-class", type=int, default=20)
    p.add_argument("--steps", type=int, default=2000, help="VAE optimizer steps")
    p.add_argument("--recipe-steps", type=int, default=800, help="classifier steps per condition")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--json", help="append one JSON line per result here")
    args = p.parse_args()
    torch.set_num_threads(1)
    train, test = mnist(args.per_class)
    recipe = Recipe(steps=args.recipe_steps, width=16)
    judge = train_classifier(train, None, 10, recipe, 0)
    base = (accuracy(judge, test), accuracy(train_classifier(train, None, 10, recipe, 0, augment=True), test))
    for variant in args.variants:
        conditioning, prior, likelihood = variant.split(",")
        cfg = VAEConfig(
            image_size=(28, 28), num_classes=10, conditioning=conditioning, latent_prior=prior,
            recon_loss=likelihood, hidden_channels=(32, 64),
        )  # fmt: skip
        t0 = time.perf_counter()
        model = train_vae(train, cfg, args.steps)
        secs = time.perf_counter() - t0
        for mode, temperature in (("prior", 1.0), ("prior", 0.7), ("variant", 1.0)):
            row = score(train, test, sample(model, train, 5000, mode, temperature), recipe, base, judge)
            head = {"variant": variant, "per_class": args.per_class, "vae_steps": args.steps, "train_s": secs}
            row = {
                **head,
                "mode": mode,
                "temperature": temperature,
                **{k: round(v, 4) for k, v in row.items()},
            }
            print(json.dumps(row), flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
