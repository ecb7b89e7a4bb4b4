"""Optimisers and LR schedules: warm-up shape, decay shape, resume lands on the same LR."""

from __future__ import annotations

import pytest
import torch

from unet_dist.config import TrainConfig
from unet_dist.errors import ConfigError
from unet_dist.registry import Registry
from unet_dist.train.optim import (OPTIMIZERS, SCHEDULERS, create_optimizer, create_scheduler, list_optimizers,
                                   list_schedulers, seek_epoch)


def _lrs(cfg: TrainConfig, steps_per_epoch: int) -> list[float]:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = create_optimizer([p], cfg)
    sched = create_scheduler(opt, cfg, steps_per_epoch)
    total = cfg.epochs * (steps_per_epoch if cfg.scheduler_interval == "step" else 1)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("optimizer", list_optimizers())
def test_optimizers_step(optimizer: str) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = create_optimizer(model.parameters(), TrainConfig(optimizer=optimizer, lr=0.05))
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    first = torch.nn.functional.mse_loss(model(x), y).item()
    for _ in range(50):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    assert torch.nn.functional.mse_loss(model(x), y).item() < first


@pytest.mark.parametrize("scheduler", list_schedulers())
@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_warmup_is_linear_then_decays(scheduler: str, interval: str) -> None:
    cfg = TrainConfig(scheduler=scheduler, scheduler_interval=interval, epochs=10, warmup_epochs=2, lr=1.0, step_size=3)
    spe = 5
    lrs = _lrs(cfg, spe)
    warm = 2 * (spe if interval == "step" else 1)
    ramp = lrs[:warm]
    assert all(b > a for a, b in zip(ramp, ramp[1:]))
    diffs = [b - a for a, b in zip(ramp, ramp[1:])]
    assert max(diffs) - min(diffs) < 1e-9
    assert ramp[-1] < 1.0 and lrs[warm] == pytest.approx(1.0)
    after = lrs[warm:]
    assert all(b <= a + 1e-12 for a, b in zip(after, after[1:]))
    if scheduler == "none":
        assert after[-1] == pytest.approx(1.0)
    else:
        assert after[-1] < 0.5


def test_scheduler_resumes_at_same_lr() -> None:
    cfg = TrainConfig(scheduler="cosine", epochs=4, warmup_epochs=1, lr=0.1)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = create_optimizer([p], cfg)
    sched = create_scheduler(opt, cfg, 3)
    for _ in range(5):
        opt.step()
        sched.step()
    opt2 = create_optimizer([p], cfg)
    sched2 = create_scheduler(opt2, cfg, 3)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    opt.step(); sched.step(); opt2.step(); sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])


def _epoch_start_lrs(cfg: TrainConfig, spe_by_epoch: list[int]) -> list[float]:
    """LR at each epoch start when epoch e runs spe_by_epoch[e] steps; the scheduler is rebuilt (as after a
    resume on another world size) whenever the step count changes."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = create_optimizer([p], cfg)
    sched, spe, out = None, None, []
    for epoch, n in enumerate(spe_by_epoch):
        if n != spe:
            state = sched.state_dict() if sched else None
            opt = create_optimizer([p], cfg) if sched else opt
            sched, spe = create_scheduler(opt, cfg, n), n
            if state:
                sched.load_state_dict(state)
        seek_epoch(sched, epoch, spe, cfg)
        out.append(opt.param_groups[0]["lr"])
        for _ in range(n + (epoch % 2)):  # real epochs run a step more or less than estimated
            opt.step()
            sched.step()
    return out


@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_schedule_follows_epochs_when_world_size_changes(interval: str) -> None:
    cfg = TrainConfig(scheduler="cosine", epochs=6, warmup_epochs=1, lr=0.1, scheduler_interval=interval)
    steady = _epoch_start_lrs(cfg, [10] * 6)
    shrunk = _epoch_start_lrs(cfg, [5, 5, 5, 10, 10, 10])  # 2 workers, then a node lost: 1 worker
    assert shrunk[1:] == pytest.approx(steady[1:])  # epoch 0 starts warm-up at 1/(warm-up steps + 1)
    assert steady[0] < steady[1] and steady[1] > steady[-1]


def test_unknown_choice_names_field() -> None:
    cfg = TrainConfig()
    object.__setattr__(cfg, "optimizer", "lion")
    with pytest.raises(ConfigError, match="train.optimizer"):
        create_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)


@pytest.mark.parametrize("registry", [OPTIMIZERS, SCHEDULERS], ids=lambda r: r.key)
def test_unknown_name_is_a_one_line_config_error(registry: Registry) -> None:
    cfg = TrainConfig()
    object.__setattr__(cfg, registry.key.split(".")[1], "lion")
    param = torch.nn.Parameter(torch.zeros(1))
    build = (lambda: create_optimizer([param], cfg)) if registry is OPTIMIZERS else (
        lambda: create_scheduler(torch.optim.SGD([param], lr=0.1), cfg, 3))
    with pytest.raises(ConfigError) as err:
        build()
    assert str(err.value) == f"{registry.key}: unknown {registry.name} 'lion'; choose one of: {', '.join(registry)}"


@pytest.mark.parametrize("registry", [OPTIMIZERS, SCHEDULERS], ids=lambda r: r.key)
def test_a_name_is_registered_once(registry: Registry) -> None:
    first = registry.list()[0]
    with pytest.raises(ValueError, match=f"'{first}' is already registered"):
        registry.register(first)(lambda *a: None)
