"""Training and evaluation steps: real optimisation on scikit-learn digits, plus the step contracts."""

from __future__ import annotations

import math
import pickle
import time

import pytest
import torch
from torch import nn

from vae.config import ConfigError
from vae.model import VAE
from vae.ranges import to_model_range, to_unit_range
from vae.training import (
    Divergence,
    EpochMetrics,
    TrainingDivergedError,
    check_finite_weights,
    eval_step,
    evaluate,
    iterate_batches,
    make_optimizer,
    run_epoch,
    train_epoch,
    train_step,
    unwrap,
)

KEYS = {"loss", "recon", "kl"}


def _fit(model: VAE, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, batch_size: int = 64) -> None:
    optimizer = make_optimizer(model, lr=lr)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        metrics = train_epoch(
            model, optimizer, iterate_batches(x, y, batch_size, shuffle=True, generator=gen)
        )
        assert math.isfinite(metrics.loss)


def _held_out(model: VAE, x: torch.Tensor, y: torch.Tensor) -> float:
    return evaluate(model, iterate_batches(x, y, 512)).loss


# ============================================================================ learning on real data
@pytest.mark.slow
@pytest.mark.parametrize("num_classes", [None, 10], ids=["unconditional", "conditional"])
def test_digits_training_beats_untrained_and_mean_image(make_vae, digits, num_classes) -> None:
    # CPU time of this process: what the test costs, not how busy the shared machine is.
    start = time.process_time()
    model = make_vae(
        seed=0, image_size=(8, 8), hidden_channels=(16, 32), latent_dim=8, num_classes=num_classes
    )
    untrained = _held_out(model, digits.x_test, digits.y_test)

    _fit(model, digits.x_train, digits.y_train, epochs=25, lr=3e-3)

    trained = _held_out(model, digits.x_test, digits.y_test)
    assert trained < 0.7 * untrained, (trained, untrained)

    y = digits.y_test if num_classes else None
    recon = model.reconstruct(digits.x_test, y)
    mse = (recon - digits.x_test).pow(2).mean().item()
    baseline = (digits.x_train.mean(0, keepdim=True) - digits.x_test).pow(2).mean().item()
    assert mse < 0.6 * baseline, (mse, baseline)

    # Samples from the prior look like data, not noise: about as much ink as the average digit.
    labels = torch.arange(64) % 10 if num_classes else None
    samples = model.sample(64, labels=labels, generator=torch.Generator().manual_seed(0)).images
    assert samples.min() >= 0.0 and samples.max() <= 1.0
    assert abs(samples.mean().item() - digits.x_train.mean().item()) < 0.1
    assert time.process_time() - start < 15.0


@pytest.mark.parametrize(
    ("activation", "norm"),
    [("tanh", (0.5, 0.5)), ("linear", (0.3, 0.4))],
    ids=["mse+tanh", "mse+linear"],
)
def test_digits_mse_ranges_learn(make_vae, digits, activation: str, norm: tuple[float, float]) -> None:
    cfg_kw = {"recon_loss": "mse", "output_activation": activation, "norm_mean": norm[0], "norm_std": norm[1]}
    model = make_vae(seed=0, image_size=(8, 8), hidden_channels=(16, 32), latent_dim=8, **cfg_kw)
    x_train, x_test = to_model_range(digits.x_train, model.cfg), to_model_range(digits.x_test, model.cfg)
    lo, hi = to_model_range(torch.tensor([0.0, 1.0]), model.cfg).tolist()
    assert x_train.min() >= lo - 1e-6 and x_train.max() <= hi + 1e-6

    before = _held_out(model, x_test, digits.y_test)
    _fit(model, x_train, digits.y_train, epochs=6, lr=3e-3)
    after = _held_out(model, x_test, digits.y_test)
    assert after < 0.8 * before, (after, before)

    # Reconstructions mapped back to [0, 1] beat the mean image too.
    recon01 = to_unit_range(model.reconstruct(x_test), model.cfg)
    mse = (recon01 - digits.x_test).pow(2).mean().item()
    baseline = (digits.x_train.mean(0, keepdim=True) - digits.x_test).pow(2).mean().item()
    assert mse < baseline, (mse, baseline)


# ================================================================================== step contracts
@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(8, 1, 8, 8, generator=gen), torch.randint(0, 3, (8,), generator=gen)


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("num_classes", [None, 3])
def test_train_step_updates_every_parameter_tensor_and_reports_floats(make_vae, batch, num_classes) -> None:
    model = make_vae(num_classes=num_classes)
    before = _params(model)
    metrics = train_step(model, make_optimizer(model, lr=1e-2), *batch)
    assert set(metrics) == KEYS and all(type(v) is float and math.isfinite(v) for v in metrics.values())
    assert metrics["loss"] == pytest.approx(metrics["recon"] + model.cfg.beta * metrics["kl"], rel=1e-5)
    changed = [not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)]
    assert sum(changed) >= len(changed) - 2  # Adam moves (almost) everything after one step
    assert model.training


def test_train_step_ignores_labels_for_unconditional_models(make_vae, batch) -> None:
    # The Ray loaders always yield labels; an unconditional model must not choke on them.
    model = make_vae()
    with pytest.raises(ValueError, match="unconditional"):
        model(*batch)
    torch.manual_seed(0)
    with_labels = train_step(model, make_optimizer(model), *batch)
    model2 = make_vae()
    torch.manual_seed(0)
    without = train_step(model2, make_optimizer(model2), batch[0], None)
    assert with_labels == without


def test_conditional_train_step_needs_labels(make_vae, batch) -> None:
    model = make_vae(num_classes=3)
    with pytest.raises(ValueError, match="pass labels"):
        train_step(model, make_optimizer(model), batch[0], None)


@pytest.mark.parametrize("num_classes", [None, 3])
def test_train_step_bf16_autocast_on_cpu(make_vae, batch, num_classes) -> None:
    model = make_vae(num_classes=num_classes)
    before = _params(model)
    metrics = train_step(model, make_optimizer(model), *batch, autocast_dtype=torch.bfloat16)
    assert set(metrics) == KEYS
    assert all(type(v) is float and math.isfinite(v) for v in metrics.values())
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    # Close to the full-precision loss on the same weights and noise.
    ref = make_vae(num_classes=num_classes)
    torch.manual_seed(0)
    fp32 = train_step(ref, make_optimizer(ref), *batch)
    model3 = make_vae(num_classes=num_classes)
    torch.manual_seed(0)
    bf16 = train_step(model3, make_optimizer(model3), *batch, autocast_dtype=torch.bfloat16)
    assert bf16["loss"] == pytest.approx(fp32["loss"], rel=0.05)


def test_bf16_train_epoch_decreases_loss(make_vae, digits) -> None:
    model = make_vae(hidden_channels=(16, 32), latent_dim=8)
    opt = make_optimizer(model, lr=3e-3)
    x, y = digits.x_train[:512], digits.y_train[:512]
    first = train_epoch(model, opt, iterate_batches(x, y, 64), autocast_dtype=torch.bfloat16)
    for _ in range(2):
        last = train_epoch(model, opt, iterate_batches(x, y, 64), autocast_dtype=torch.bfloat16)
    assert last.loss < first.loss


def test_make_optimizer(make_vae) -> None:
    model = make_vae()
    adam = make_optimizer(model, lr=5e-4)
    assert type(adam) is torch.optim.Adam
    assert adam.param_groups[0]["lr"] == 5e-4
    params = {id(p) for g in adam.param_groups for p in g["params"]}
    assert params == {id(p) for p in model.parameters()}
    adamw = make_optimizer(model, lr=1e-3, weight_decay=0.01)
    assert type(adamw) is torch.optim.AdamW and adamw.param_groups[0]["weight_decay"] == 0.01


def test_eval_step_does_not_change_the_model_and_is_seedable(make_vae, batch) -> None:
    model = make_vae().train()
    before = _params(model)
    a = eval_step(model, *batch, generator=torch.Generator().manual_seed(3))
    assert not model.training
    assert all(torch.equal(a_, b_) for a_, b_ in zip(before, model.parameters(), strict=True))
    b = eval_step(model, *batch, generator=torch.Generator().manual_seed(3))
    assert a == b and set(a) == KEYS
    assert all(p.grad is None for p in model.parameters())


def test_evaluate_is_repeatable_and_seed_dependent(make_vae, digits) -> None:
    model = make_vae()
    x, y = digits.x_test[:100], digits.y_test[:100]
    first = evaluate(model, iterate_batches(x, y, 32))
    again = evaluate(model, iterate_batches(x, y, 32))
    assert first.loss == again.loss and first.kl == again.kl
    other = evaluate(model, iterate_batches(x, y, 32), seed=1)
    assert other.loss != first.loss
    assert other.kl == pytest.approx(first.kl, rel=1e-5)  # KL is closed form: noise does not enter
    assert first.samples == 100 and first.loss == pytest.approx(first.recon + first.kl, rel=1e-5)


def test_train_epoch_counts_samples(make_vae, digits) -> None:
    model = make_vae()
    metrics = train_epoch(
        model, make_optimizer(model), iterate_batches(digits.x_train[:70], digits.y_train[:70], 32)
    )
    assert isinstance(metrics, EpochMetrics)
    assert metrics.samples == 70 and metrics.seconds > 0 and metrics.samples_per_s > 0


def test_run_epoch_weights_batches_by_size() -> None:
    losses = iter([1.0, 5.0])

    def step(x, y):
        value = next(losses)
        return {"loss": value, "recon": 2 * value, "kl": 0.0}

    batches = [(torch.zeros(3, 1, 8, 8), None), (torch.zeros(1, 1, 8, 8), None)]
    metrics = run_epoch(step, batches)
    assert metrics.loss == pytest.approx((3 * 1.0 + 1 * 5.0) / 4)
    assert metrics.recon == pytest.approx(4.0)
    assert metrics.samples == 4


def test_empty_epoch_raises(make_vae) -> None:
    with pytest.raises(ValueError, match="no batches"):
        evaluate(make_vae(), [])
    with pytest.raises(ValueError, match="no batches"):
        run_epoch(lambda x, y: {}, iter(()))


def test_samples_per_s_with_zero_seconds() -> None:
    assert EpochMetrics(1.0, 1.0, 0.0, samples=10, seconds=0.0).samples_per_s == 0.0
    assert EpochMetrics(1.0, 1.0, 0.0, samples=10, seconds=2.0).samples_per_s == 5.0


# ========================================================================================= batching
def test_iterate_batches_in_order() -> None:
    images = torch.arange(10, dtype=torch.float32).reshape(10, 1, 1, 1)
    labels = torch.arange(10)
    batches = list(iterate_batches(images, labels, batch_size=4))
    assert [len(x) for x, _ in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([y for _, y in batches]), labels)
    assert all(torch.equal(x.flatten().long(), y) for x, y in batches)  # rows stay paired


def test_iterate_batches_shuffle_is_a_seeded_permutation() -> None:
    images = torch.arange(50, dtype=torch.float32).reshape(50, 1, 1, 1)
    labels = torch.arange(50)

    def order(seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        batches = list(iterate_batches(images, labels, 16, shuffle=True, generator=gen))
        assert all(torch.equal(x.flatten().long(), y) for x, y in batches)
        return torch.cat([y for _, y in batches])

    a = order(0)
    assert torch.equal(a, order(0))
    assert not torch.equal(a, order(1))
    assert not torch.equal(a, labels)
    assert torch.equal(a.sort().values, labels)


# ========================================================================================== unwrap
class _DDPLike(nn.Module):
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


class _CompiledLike(nn.Module):
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self._orig_mod = module

    def forward(self, *args, **kwargs):
        return self._orig_mod(*args, **kwargs)


def test_unwrap(make_vae) -> None:
    model = make_vae()
    assert unwrap(model) is model
    assert unwrap(_DDPLike(model)) is model
    assert unwrap(_CompiledLike(model)) is model
    assert unwrap(_DDPLike(_CompiledLike(model))) is model
    with pytest.raises(TypeError, match="expected a VAE"):
        unwrap(nn.Linear(2, 2))


def test_train_step_through_a_wrapper(make_vae, batch) -> None:
    # Runners pass DDP-wrapped models; the step must find the config and labels policy through it.
    model = make_vae(num_classes=3)
    metrics = train_step(_DDPLike(model), make_optimizer(model), *batch)
    assert set(metrics) == KEYS
    assert set(eval_step(_DDPLike(model), *batch)) == KEYS


# ============================================================================ divergence
def test_a_non_finite_loss_stops_before_the_update(make_vae, batch) -> None:
    """An inf learning rate: step 1 (finite loss) ruins the weights, step 2 refuses its nan loss and
    leaves the weights as they were; run_epoch adds the step."""
    model = make_vae(num_classes=10)
    optimizer = make_optimizer(model, lr=math.inf)
    x, y = batch
    train_step(model, optimizer, x, y)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(TrainingDivergedError) as info:
        run_epoch(lambda xb, yb: train_step(model, optimizer, xb, yb), [(x, y), (x, y)])
    after = list(model.parameters())
    assert all(_same(a, b) for a, b in zip(before, after, strict=True))
    error = info.value
    assert isinstance(error, ConfigError) and error.divergence.step == 1
    assert str(error).startswith("training loss became nan") and "at step 1: lower train.lr (now inf)" in str(
        error
    )
    assert "\n" not in str(error)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(((a == b) | (a.isnan() & b.isnan())).all())


def test_divergence_gains_its_epoch_and_survives_pickling() -> None:
    """Ray pickles a worker's error to the driver: it must come back whole, epoch and all."""
    error = TrainingDivergedError(
        Divergence("loss", {"loss": math.inf, "recon": 1.0, "kl": math.inf}, lr=0.5)
    )
    located = error.at(step=7).at(epoch=3, step=99)  # known values are kept
    again = pickle.loads(pickle.dumps(located))
    assert type(again) is TrainingDivergedError and str(again) == str(located)
    assert str(again) == (
        "training loss became inf (loss inf, recon 1, kl inf) at epoch 3 step 7: lower train.lr (now 0.5), "
        "or check the data for extreme values; no model was saved"
    )


def test_check_finite_weights(make_vae) -> None:
    model = make_vae()
    check_finite_weights(model, epoch=1)  # a fresh model is fine
    with torch.no_grad():
        next(model.parameters())[0].fill_(math.inf)
    with pytest.raises(
        TrainingDivergedError, match=r"^the model's weights became nan or infinite at epoch 4"
    ):
        check_finite_weights(model, epoch=4)
