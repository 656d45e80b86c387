import math

import pytest
import torch

from nnunet_mass.training.ema import build_ema, ema_state_on_cpu, restore_ema, update_ema
from nnunet_mass.training.losses import InContextLoss, task_dice
from nnunet_mass.training.schedules import WarmupCosineLRScheduler, warmup_cosine_lr


def _targets():
    targets = torch.zeros(2, 3, 8, 8, 8)
    targets[:, 0, 2:6, 2:6, 2:6] = 1
    targets[:, 1, :4] = 1
    return targets


def test_perfect_logits_give_a_lower_loss_than_wrong_ones():
    targets, valid = _targets(), torch.ones(2, 3, dtype=torch.bool)
    loss = InContextLoss()
    perfect = loss(20 * (2 * targets - 1), targets, valid)
    wrong = loss(-20 * (2 * targets - 1), targets, valid)
    assert perfect.item() < 0.05 < 1.5 < wrong.item()


def test_invalid_channels_do_not_count_and_get_no_gradient():
    targets = _targets()
    valid = torch.tensor([[True, True, False], [True, False, False]])
    logits = torch.randn(2, 3, 8, 8, 8, requires_grad=True)
    loss = InContextLoss()(logits, targets, valid)
    changed = logits.detach().clone()
    changed[~valid] = 1e3  # garbage where the task is undefined
    assert InContextLoss()(changed, targets, valid).item() == pytest.approx(loss.item(), rel=1e-6)
    loss.backward()
    assert logits.grad[~valid].abs().max() == 0 and logits.grad[valid].abs().max() > 0


def test_an_empty_target_is_learned_as_predict_nothing():
    targets, valid = torch.zeros(1, 1, 8, 8, 8), torch.ones(1, 1, dtype=torch.bool)
    loss = InContextLoss()
    assert loss(torch.full_like(targets, -20.0), targets, valid) < loss(torch.full_like(targets, 20.0), targets, valid)


def test_no_valid_channel_gives_zero_loss_not_nan():
    targets = _targets()
    assert InContextLoss()(torch.randn_like(targets), targets, torch.zeros(2, 3, dtype=torch.bool)).item() == 0.0


def test_task_dice_counts_overlap_and_marks_empty_tasks_nan():
    targets = _targets()
    logits = 20 * (2 * targets - 1)
    logits[1, 0] = -20  # miss one structure completely
    targets[:, 2] = 0
    dice = task_dice(logits, targets)
    assert dice[0, 0] == 1 and dice[1, 0] == 0 and dice[0, 1] == 1
    assert torch.isnan(dice[:, 2]).all()


def test_ema_follows_the_weights_with_its_decay_and_restores():
    network = torch.nn.Linear(2, 1)
    ema = build_ema(network, decay=0.9)
    update_ema(ema, network)  # the first update copies
    start = network.weight.detach().clone()
    with torch.no_grad():
        network.weight.add_(1.0)
    update_ema(ema, network)
    assert torch.allclose(ema.module.weight, start + 0.1)
    saved = ema_state_on_cpu(ema)
    assert set(saved) == {"weight", "bias"} and all(v.device.type == "cpu" for v in saved.values())
    other = build_ema(torch.nn.Linear(2, 1), decay=0.9)
    restore_ema(other, saved, num_updates=2)
    update_ema(other, network)  # an average, not a copy, after restoring
    assert torch.allclose(other.module.weight, 0.9 * (start + 0.1) + 0.1 * network.weight)
    with pytest.raises(ValueError, match="decay"):
        build_ema(network, decay=1.0)


def test_warmup_cosine_rises_peaks_and_ends_near_the_final_lr():
    lrs = [warmup_cosine_lr(i, 2e-3, warmup_iterations=10, total_iterations=200) for i in range(200)]
    assert lrs[0] == pytest.approx(2e-4) and lrs[9] == pytest.approx(2e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(1e-7)
    assert warmup_cosine_lr(105, 2e-3, 10, 200) == pytest.approx(1e-7 + 0.5 * (2e-3 - 1e-7) * (1 + math.cos(math.pi * 95 / 189)))


def test_per_iteration_scheduler_resumes_on_the_same_curve():
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = WarmupCosineLRScheduler(optimizer, 1e-3, iterations_per_epoch=10, num_epochs=5)
    scheduler.step(3)  # nnU-Net's call at the start of epoch 3
    assert optimizer.param_groups[0]["lr"] == pytest.approx(scheduler._lr(30))
    scheduler.step_iteration(37)
    assert scheduler.get_last_lr() == pytest.approx([warmup_cosine_lr(37, 1e-3, 2, 50)])
