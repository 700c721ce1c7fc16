"""Usefulness of the synthetic set with the product defaults: does it help a downstream classifier?

For each setting, in one process, with the pipeline's own code and default config:
  1. the real training images: MNIST (`../shared/data`) at N images per class drawn (seeded) from
     the training split, or all of scikit-learn's digits;
  2. train the VAE (`fit_local`, the defaults: budget, conditioning, prior, decoder likelihood);
  3. generate and commit the default synthetic set (`generate`, in-process, 10,000 rows);
  4. the usefulness report (`usefulness_report`, the default recipe and seeds) of the committed rows.
     MNIST: the real test split (10,000 images) is the held-out set and the VAE trains on every
     real image; digits: the pipeline's own held-out split (`train.val_fraction`), as `vaeaug run`.
Prints a Markdown table (the BENCHMARKS.md one) and `--json PATH` writes every figure.

    python benchmarks/usefulness.py --settings mnist:20 mnist:100 digits --json usefulness.json
    python benchmarks/usefulness.py --settings mnist:20 --set generate.curation_threshold=0.5
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from pipelines.config import PipelineConfig, load_config
from pipelines.data import DataConfig, ImageSet, load_images, resolve_data_shape
from pipelines.data.split import split_sizes
from pipelines.generate import generate
from pipelines.generate.commit import open_fs
from pipelines.readers import open_dataset
from pipelines.training.local import fit_local
from pipelines.usefulness.dataset import read_sample, real_splits, recipe_of
from pipelines.usefulness.report import CONDITIONS, UsefulnessReport, usefulness_report

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def mnist_subset(per_class: int, seed: int, model_cfg: Any) -> tuple[ImageSet, ImageSet]:
    """(N per class from MNIST train, all of MNIST test), in the model's range."""
    data = DataConfig(source="mnist", path=str(SHARED), split="train")
    train = load_images(data, model_cfg)
    test = load_images(DataConfig(source="mnist", path=str(SHARED), split="test"), model_cfg)
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for k in range(len(train.class_names)):
        members = torch.nonzero(train.labels == k).squeeze(1)
        picks.append(members[torch.randperm(len(members), generator=gen)[:per_class]])
    return train.subset(torch.cat(picks).sort().values), test


def _config(out: str, source: str, extra: list[str]) -> PipelineConfig:
    """The default config as `vaeaug run` resolves it (shape and likelihood from the data)."""
    overrides = [f"output_dir={out}", "train.backend=local", f"data.source={source}"]
    if source == "mnist":
        overrides.append(f"data.path={SHARED}")
        overrides.append("train.val_fraction=0")  # the test split is the held-out set
        overrides.append("report.enabled=false")  # measured below against the test split
    cfg = load_config(None, [*overrides, *extra])
    resolve_data_shape(cfg)
    return cfg


def run_setting(name: str, args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    source, _, n = name.partition(":")
    cfg = _config(f"{workdir}/{name.replace(':', '-')}", source, args.set)
    if source == "mnist":
        train, test = mnist_subset(int(n), args.seed, cfg.model)
    else:
        train, test = load_images(DataConfig(source="digits"), cfg.model), None
    t0 = time.perf_counter()
    model, _, _ = fit_local(cfg, train)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = generate(cfg, data=train, progress=False, use_ray=False)
    t_gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    if test is None:
        if result.usefulness is None:
            raise SystemExit(f"{name}: no usefulness report ({result.usefulness_note})")
        report = UsefulnessReport.from_dict(result.usefulness)
    else:
        manifest = open_dataset(result.dataset_dir)
        fs, _ = open_fs(result.dataset_dir)
        paths = [open_fs(u)[1] for u in manifest.files]
        synthetic = read_sample(fs, paths, manifest.rows, cfg.report.max_synthetic)
        real = real_splits(train, model.cfg, 0.0, cfg.train.seed)  # the VAE trained on all of them
        heldout = real_splits(test, model.cfg, 0.0, 0).train  # the whole test split
        report = usefulness_report(
            real.train, heldout, synthetic, real.class_names, recipe_of(cfg.report), cfg.report.seeds,
            curated=cfg.generate.curation_threshold is not None,
        )  # fmt: skip
    t_report = time.perf_counter() - t0 if test is not None else report.seconds
    steps = cfg.train.total_steps(split_sizes(len(train), cfg.train.val_fraction)[0])
    return {
        "setting": name,
        "real_images": len(train) if test is not None else report.images["train"],
        "heldout_images": report.images["heldout"],
        "synthetic_rows": result.rows,
        "vae_steps": steps,
        "seconds": {"train": t_train, "generate": t_gen, "report": t_report},
        "report": report.to_dict(),
        "model": model.cfg.to_dict(),
        "overrides": list(args.set),
    }


def _pm(report: dict[str, Any], cond: str) -> str:
    return f"{100 * report['mean_accuracy'][cond]:.1f} ± {100 * report['spread_accuracy'][cond]:.1f}"


def markdown(rows: list[dict[str, Any]]) -> str:
    head = (
        "| setting | real imgs | VAE steps | real | real+classic | real+synth | real+synth+classic "
        "| gain (pts) | label fidelity | CAS | Fréchet ratio | wall s (train / gen / report) |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        rep, s = r["report"], r["seconds"]
        accs = " | ".join(_pm(rep, c) for c in CONDITIONS)
        lines.append(
            f"| {r['setting']} | {r['real_images']} | {r['vae_steps']} | {accs} | {100 * rep['gain']:+.1f} "
            f"| {rep['label_fidelity']:.3f} | {rep['cas']:.3f} | {rep['frechet_ratio']:.2f} "
            f"| {s['train']:.0f} / {s['generate']:.0f} / {s['report']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", nargs="+", default=["mnist:20", "mnist:100", "digits"])
    p.add_argument("--seed", type=int, default=0, help="seed of the MNIST subset")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", nargs="*", default=[], help="extra dotted config overrides")
    p.add_argument("--json", help="write every figure here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="vaeaug-usefulness-") as workdir:
        for name in args.settings:
            if name.startswith("mnist") and not (SHARED / "MNIST" / "raw").exists():
                print(f"skipping {name}: {SHARED}/MNIST/raw is missing")
                continue
            rows.append(run_setting(name, args, workdir))
            print(json.dumps({k: rows[-1][k] for k in ("setting", "vae_steps", "seconds")}), flush=True)
            print(
                "  " + "\n  ".join(UsefulnessReport.from_dict(rows[-1]["report"]).summary_lines()), flush=True
            )
    print(f"\nmachine: {platform.processor() or platform.machine()}, torch threads {args.threads}\n")
    print(markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
