"""Every registered loss: finite, trainable, respects the ignore label, validates its weights."""

from __future__ import annotations

import pytest
import torch

from unet_dist.errors import ConfigError
from unet_dist.losses import LOSSES, create_loss, list_losses, register_loss, remap_ignore


def _batch(num_classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, num_classes, 8, 8, generator=g)
    target = torch.randint(0, max(2, num_classes), (2, 8, 8), generator=g)
    return logits, target


@pytest.mark.parametrize("num_classes", [1, 2, 3])
@pytest.mark.parametrize("name", list_losses())
def test_loss_finite_and_decreases(name: str, num_classes: int) -> None:
    loss_fn = create_loss(name, num_classes)
    init, target = _batch(num_classes)
    logits = init.clone().requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=0.1)
    first = loss_fn(logits, target)
    assert torch.isfinite(first) and first.ndim == 0
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn(logits, target)
        loss.backward()
        opt.step()
    assert loss_fn(logits, target).item() < 0.8 * first.item()


@pytest.mark.parametrize("num_classes", [1, 3])
@pytest.mark.parametrize("name", list_losses())
def test_loss_ignores_ignored_pixels(name: str, num_classes: int) -> None:
    loss_fn = create_loss(name, num_classes)
    logits, target = _batch(num_classes, seed=1)
    ignored = target.clone()
    ignored[:, :4] = -1
    other = logits.clone()
    other[:, :, :4] = torch.randn_like(other[:, :, :4]) * 10
    assert torch.allclose(loss_fn(logits, ignored), loss_fn(other, ignored), atol=1e-6)
    grad_in = logits.clone().requires_grad_(True)
    loss_fn(grad_in, ignored).backward()
    assert grad_in.grad[:, :, :4].abs().max() == 0
    assert grad_in.grad[:, :, 4:].abs().max() > 0


@pytest.mark.parametrize("name", list_losses())
def test_loss_all_ignored_is_zero_not_nan(name: str) -> None:
    logits, target = _batch(2)
    value = create_loss(name, 2)(logits, torch.full_like(target, -1))
    assert torch.isfinite(value)


@pytest.mark.parametrize("name", list_losses())
def test_class_weights_change_loss(name: str) -> None:
    logits, target = _batch(2, seed=3)
    plain = create_loss(name, 2)(logits, target)
    weighted = create_loss(name, 2, [0.1, 5.0])(logits, target)
    assert torch.isfinite(weighted) and not torch.isclose(plain, weighted)


def test_bad_loss_config_names_the_field() -> None:
    with pytest.raises(ConfigError, match="train.loss"):
        create_loss("nope", 2)
    with pytest.raises(ConfigError, match=f"train.loss: unknown loss 'nope'; choose one of: {', '.join(LOSSES)}$"):
        create_loss("nope", 2)
    with pytest.raises(ConfigError, match="train.class_weights"):
        create_loss("ce", 3, [1.0, 2.0])


def test_remap_ignore() -> None:
    t = torch.tensor([[0, 1, 255]])
    assert remap_ignore(t, 255).tolist() == [[0, 1, -1]]
    assert remap_ignore(t, None).tolist() == t.tolist()


def test_a_loss_name_is_registered_once() -> None:
    before = LOSSES.get("ce")
    with pytest.raises(ValueError, match="loss 'ce' is already registered"):
        register_loss("ce")(create_loss)
    assert LOSSES.get("ce") is before and list_losses() == sorted(LOSSES.list())
