import pytest
import torch

from nnunet_mass.training.schedules import WarmupPolyLRScheduler, warmup_poly_lr


def test_warmup_rises_linearly_to_the_initial_lr_then_decays():
    lrs = [warmup_poly_lr(e, 1e-2, warmup_epochs=4, num_epochs=20) for e in range(20)]
    assert lrs[:4] == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2])
    assert lrs[4] == pytest.approx(1e-2)
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:]))
    assert lrs[-1] < 1e-3


def test_without_warmup_it_is_nnunets_poly():
    assert warmup_poly_lr(10, 1e-2, 0, 100) == pytest.approx(1e-2 * (1 - 10 / 100) ** 0.9)


def test_warmup_longer_than_training_is_refused():
    with pytest.raises(ValueError, match="warmup_epochs"):
        warmup_poly_lr(0, 1e-2, warmup_epochs=10, num_epochs=10)


def test_scheduler_sets_the_lr_of_every_group_and_resumes_on_the_same_curve():
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD([{"params": params[:1]}, {"params": params[1:]}], lr=1.0)
    scheduler = WarmupPolyLRScheduler(optimizer, 1e-2, warmup_epochs=2, num_epochs=10)
    scheduler.step(7)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([warmup_poly_lr(7, 1e-2, 2, 10)] * 2)
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(warmup_poly_lr(8, 1e-2, 2, 10))
    assert scheduler.get_last_lr() == pytest.approx([warmup_poly_lr(8, 1e-2, 2, 10)] * 2)


def test_a_groups_lr_scale_multiplies_its_lr():
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD([{"params": params[:1]}, {"params": params[1:], "lr_scale": 0.1}], lr=1.0)
    WarmupPolyLRScheduler(optimizer, 1e-2, warmup_epochs=0, num_epochs=10).step(3)
    lr = warmup_poly_lr(3, 1e-2, 0, 10)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([lr, 0.1 * lr])
