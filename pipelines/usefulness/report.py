"""`usefulness_report`: does a synthetic set help a downstream classifier? One typed answer.

Conditions, each trained with the same `Recipe` (same optimizer steps) and `seeds` seeds, all tested
on real held-out images the generator never trained on:

    real            the real training images
    real+classic    the same with classic augmentation
    real+synth      real + synthetic (a fixed share of each batch is synthetic)
    real+synth+classic
    synth           synthetic only (CAS = its accuracy / real's)

The first real model (seed 0) is the judge: it labels the synthetic images (label fidelity) and gives
the feature space of the Fréchet distances.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

from pipelines.usefulness.classifier import Pool, Recipe, SmallCNN, accuracy, train_classifier
from pipelines.usefulness.metrics import Spread, features, frechet_distance, label_fidelity

CONDITIONS: tuple[str, ...] = ("real", "real+classic", "real+synth", "real+synth+classic")
#: A gain within this many points of zero (or within the seeds' spread) is "no measurable effect".
NEUTRAL_POINTS = 0.5
#: Fewer held-out images than this (or than 2 per class) make the verdict "inconclusive".
MIN_HELDOUT = 50


@dataclass
class UsefulnessReport:
    """The usefulness figures of one synthetic set (accuracies in [0, 1]).

    Args:
        class_names: the classes, in label order.
        label_fidelity: share of synthetic images the judge labels as requested.
        fidelity_per_class: that share per class name.
        confidence: mean judge probability of the requested class.
        cas: synthetic-only accuracy / real-only accuracy (1.0: as good as the real data).
        accuracy: condition -> accuracies per seed (see `CONDITIONS`), plus "synth".
        gain: best real+synth condition minus the best real-only condition, in accuracy.
        frechet: Fréchet distance synthetic vs real held-out, in the judge's feature space.
        frechet_floor: the same for real training vs real held-out images.
        images: "train", "heldout", "synthetic" -> number of images used.
        recipe: the classifier recipe (steps, batch size, lr, width, synthetic share).
        seeds: seeds per condition.
        seconds: wall time of the whole report.
    """

    class_names: list[str]
    label_fidelity: float
    fidelity_per_class: dict[str, float]
    confidence: float
    cas: float
    accuracy: dict[str, list[float]]
    gain: float
    frechet: float
    frechet_floor: float
    images: dict[str, int]
    recipe: dict[str, Any]
    seeds: int
    seconds: float = 0.0

    @property
    def frechet_ratio(self) -> float:
        """frechet / frechet_floor: 1.0 means as close to held-out data as real training images are."""
        return self.frechet / self.frechet_floor if self.frechet_floor > 0 else float("inf")

    def mean(self, condition: str) -> float:
        return Spread(self.accuracy[condition]).mean

    def spread(self, condition: str) -> float:
        return Spread(self.accuracy[condition]).spread

    @property
    def noise(self) -> float:
        """The accuracy difference that is within noise: the largest of `NEUTRAL_POINTS`, the seeds'
        spread, and the standard error of an accuracy on this many held-out images."""
        p = min(max(self.mean("real"), 0.01), 0.99)
        standard_error = (p * (1 - p) / max(1, self.images["heldout"])) ** 0.5
        return max(NEUTRAL_POINTS / 100, standard_error, *(self.spread(c) for c in CONDITIONS))

    @property
    def verdict(self) -> str:
        """ "helps", "hurts", "neutral", or "inconclusive" (too few held-out images to tell)."""
        if self.images["heldout"] < max(MIN_HELDOUT, 2 * len(self.class_names)):
            return "inconclusive"
        if self.gain > self.noise:
            return "helps"
        if self.gain < -self.noise:
            return "hurts"
        return "neutral"

    def headline(self) -> str:
        """One plain sentence: does adding the synthetic set help?"""
        best_real = max(self.mean("real"), self.mean("real+classic"))
        best_mix = max(self.mean("real+synth"), self.mean("real+synth+classic"))
        pts = f"{100 * best_real:.1f}% -> {100 * best_mix:.1f}% ({100 * self.gain:+.1f} points)"
        if self.verdict == "helps":
            return f"The synthetic set HELPS a downstream classifier: {pts}."
        if self.verdict == "inconclusive":
            return (
                f"INCONCLUSIVE: only {self.images['heldout']} held-out images, too few to tell whether "
                f"the synthetic set helps: {pts}. Hold out more (train.val_fraction) or use more data."
            )
        if self.verdict == "hurts":
            return (
                f"WARNING: the synthetic set HURTS a downstream classifier: {pts}. "
                "Do not train on it as it is (see the report for what to change)."
            )
        return f"The synthetic set has NO MEASURABLE EFFECT on a downstream classifier: {pts}."

    def summary_lines(self) -> list[str]:
        """Console lines: the headline, then one line per figure."""
        acc = ", ".join(
            f"{c} {100 * self.mean(c):.1f}±{100 * self.spread(c):.1f}%" for c in (*CONDITIONS, "synth")
        )
        return [
            self.headline(),
            f"  label fidelity {self.label_fidelity:.3f} (mean confidence {self.confidence:.2f}); "
            f"CAS {self.cas:.3f}; Fréchet ratio {self.frechet_ratio:.2f} "
            f"({self.frechet:.3g} vs floor {self.frechet_floor:.3g})",
            f"  downstream accuracy on {self.images['heldout']} real held-out images "
            f"({self.seeds} seeds, {self.recipe['steps']} steps each): {acc}",
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, with the derived figures (means, spreads, ratio, verdict) included."""
        out = asdict(self)
        ratio = self.frechet_ratio
        out["frechet_ratio"] = ratio if math.isfinite(ratio) else None  # JSON has no Infinity
        out["verdict"] = self.verdict
        out["headline"] = self.headline()
        out["mean_accuracy"] = {c: self.mean(c) for c in self.accuracy}
        out["spread_accuracy"] = {c: self.spread(c) for c in self.accuracy}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UsefulnessReport:
        """Inverse of `to_dict` (derived keys are dropped)."""
        derived = {"frechet_ratio", "verdict", "headline", "mean_accuracy", "spread_accuracy"}
        return cls(**{k: v for k, v in data.items() if k not in derived})


def _real_runs(
    train: Pool, heldout: Pool, k: int, recipe: Recipe, seeds: int, flip: bool, judge: SmallCNN | None
) -> tuple[list[SmallCNN], dict[str, list[float]]]:
    """The real-only runs; a given judge is the seed-0 real run (same recipe), so it is not retrained."""
    runs: dict[str, list[float]] = {"real": [], "real+classic": []}
    models = []
    for seed in range(seeds):
        model = judge if (seed == 0 and judge is not None) else train_classifier(train, None, k, recipe, seed)
        models.append(model)
        runs["real"].append(accuracy(model, heldout))
        aug = train_classifier(train, None, k, recipe, seed, augment=True, flip=flip)
        runs["real+classic"].append(accuracy(aug, heldout))
    return models, runs


def _synthetic_runs(
    train: Pool, heldout: Pool, synthetic: Pool, k: int, recipe: Recipe, seeds: int, flip: bool
) -> dict[str, list[float]]:
    runs: dict[str, list[float]] = {"real+synth": [], "real+synth+classic": []}
    for seed in range(seeds):
        runs["real+synth"].append(accuracy(train_classifier(train, synthetic, k, recipe, seed), heldout))
        aug = train_classifier(train, synthetic, k, recipe, seed, augment=True, flip=flip)
        runs["real+synth+classic"].append(accuracy(aug, heldout))
    runs["synth"] = [accuracy(train_classifier(None, synthetic, k, recipe, 0), heldout)]
    return runs


def _frechet(scorer: SmallCNN, train: Pool, heldout: Pool, synthetic: Pool) -> tuple[float, float]:
    """(synthetic vs held-out, real train vs held-out), with as many synthetic as training images so
    both distances carry the same small-sample bias."""
    f_held = features(scorer, heldout.images)
    f_train = features(scorer, train.images)
    f_syn = features(scorer, synthetic.images[: max(2, len(train.images))])
    return frechet_distance(f_syn, f_held), frechet_distance(f_train, f_held)


def _check_inputs(seeds: int, *pools: Pool) -> None:
    """Raise ValueError unless there is a seed and >= 2 images in each of train, held-out, synthetic."""
    if seeds < 1:
        raise ValueError(f"seeds={seeds}: use >= 1")
    if min(len(pool.images) for pool in pools) < 2:
        raise ValueError("the usefulness report needs >= 2 training, held-out and synthetic images")


def _scorer(models: list[SmallCNN], curated: bool, train: Pool, k: int, recipe: Recipe) -> SmallCNN:
    """The classifier that scores label fidelity and the Fréchet features: the first real run, or
    for a set the judge (that first run) curated, another real-trained one (seed 1)."""
    if not curated:
        return models[0]
    return models[1] if len(models) > 1 else train_classifier(train, None, k, recipe, seed=1)


def _cas_and_gain(runs: dict[str, list[float]]) -> tuple[float, float]:
    """(CAS: synthetic-only accuracy (one seed: synthetic-only is trained once) over real-only's mean,
    gain: the best mean with synthetic data minus the best mean without)."""
    best = {c: Spread(runs[c]).mean for c in runs}
    cas = runs["synth"][0] / best["real"] if best["real"] > 0 else 0.0
    gain = max(best["real+synth"], best["real+synth+classic"]) - max(best["real"], best["real+classic"])
    return cas, gain


def usefulness_report(
    train: Pool,
    heldout: Pool,
    synthetic: Pool,
    class_names: list[str],
    recipe: Recipe | None = None,
    seeds: int = 2,
    flip: bool = False,
    judge: SmallCNN | None = None,
    curated: bool = False,
) -> UsefulnessReport:
    """Measure how much `synthetic` helps a classifier of `train`'s classes on `heldout`.

    Args:
        train: the real images the generator was trained on (in [0, 1]) with labels.
        heldout: real images neither the generator nor any classifier trained on.
        synthetic: the synthetic images and the labels they were generated for.
        class_names: K names; labels are indices into it.
        recipe: the downstream classifier recipe (the same for every condition).
        seeds: seeds per condition (>= 1; >= 2 gives a spread).
        flip: classic augmentation mirrors images left-right (natural photos).
        judge: the real-only classifier of this recipe at seed 0 (`pipelines.usefulness.judge`),
            reused as the first real run; None trains it here.
        curated: the synthetic images were selected by `judge`; label fidelity and the Fréchet
            features then come from another real-trained classifier (seed 1), not from the judge
            that selected them.

    Returns:
        The `UsefulnessReport`.
    """
    _check_inputs(seeds, train, heldout, synthetic)
    recipe = recipe or Recipe()
    k = len(class_names)
    t0 = time.perf_counter()
    models, runs = _real_runs(train, heldout, k, recipe, seeds, flip, judge)
    runs.update(_synthetic_runs(train, heldout, synthetic, k, recipe, seeds, flip))
    scorer = _scorer(models, curated, train, k, recipe)
    fid = label_fidelity(scorer, synthetic)
    frechet, floor = _frechet(scorer, train, heldout, synthetic)
    cas, gain = _cas_and_gain(runs)
    return UsefulnessReport(
        class_names=list(class_names),
        label_fidelity=fid.overall,
        fidelity_per_class={class_names[i]: v for i, v in fid.per_class.items()},
        confidence=fid.confidence,
        cas=cas,
        accuracy=runs,
        gain=gain,
        frechet=frechet,
        frechet_floor=floor,
        images={"train": len(train.images), "heldout": len(heldout.images), "synthetic": len(synthetic)},
        recipe=asdict(recipe),
        seeds=seeds,
        seconds=time.perf_counter() - t0,
    )


__all__ = ["CONDITIONS", "UsefulnessReport", "usefulness_report"]
