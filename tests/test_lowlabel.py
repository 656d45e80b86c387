"""nnUNetv2_mass_lowlabel: splits, checks before training, aggregation, and one stock run of both arms."""
import json
from pathlib import Path

import pytest
import torch

from helpers import CPU_TINY_PLANS, PRETRAINED_DATASET, copy_dataset
from nnunet_mass.cli.lowlabel import main as lowlabel_main
from nnunet_mass.downstream.lowlabel import (PRETRAINED, SCRATCH, cases_from_fractions, held_out_cases,
                                             plan_runs, register_folds, training_subsets)
from nnunet_mass.downstream.lowlabel_report import aggregate, format_table

CASES = [f"case_{i:02d}" for i in range(10)]


def test_fractions_round_down_and_a_fraction_that_leaves_no_case_is_refused():
    assert cases_from_fractions([0.125, 0.25, 1.0], 8) == [1, 2, 8]
    with pytest.raises(ValueError, match="fraction 0.1 leaves no case of the 8 training cases.*1/8"):
        cases_from_fractions([0.1], 8)


def test_held_out_cases_are_fixed_and_subsets_nested_and_disjoint_from_them():
    test = held_out_cases(CASES, 3, seed=0)
    assert test == held_out_cases(CASES, 3, seed=0) and len(set(test)) == 3
    pool = [c for c in CASES if c not in test]
    subsets = training_subsets(pool, [1, 2, 5], seed=4)
    assert set(subsets[1]) < set(subsets[2]) < set(subsets[5]) and not set(subsets[5]) & set(test)
    assert training_subsets(pool, [2], seed=5)[2] != subsets[2] or training_subsets(pool, [2], seed=6)[2] != subsets[2]
    with pytest.raises(ValueError, match="only 7 are left"):
        training_subsets(pool, [8], seed=0)


def test_seeds_that_draw_the_same_subset_share_one_run(tmp_path):
    runs, test = plan_runs(tmp_path / "splits_final.json", CASES, [1, 7], [0, 1, 2], num_test=3)
    assert [(run.num_cases, run.seed) for run in runs] == [(1, 0), (1, 1), (1, 2), (7, 0)]
    assert len({run.fold for run in runs}) == 4 and not set(runs[-1].train) & set(test)


def test_seeds_train_their_one_case_runs_on_different_cases():
    pool = CASES[:7]
    firsts = [training_subsets(pool, [1, 3], seed)[1][0] for seed in range(len(pool))]
    assert sorted(firsts) == sorted(pool)
    assert training_subsets(pool, [1, 3], seed=2) == training_subsets(pool, [1, 3], seed=2)


def test_folds_are_appended_after_nnunets_five_and_reused_on_a_second_call(tmp_path):
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    splits_file = tmp_path / "splits_final.json"
    ours = [{"train": ["case_01"], "val": ["case_09"]}, {"train": ["case_02", "case_01"], "val": ["case_09"]}]
    assert register_folds(splits_file, CASES, ours) == [5, 6]
    written = json.loads(splits_file.read_text())
    assert written[:5] == generate_crossval_split(sorted(CASES), seed=12345, n_splits=5)
    assert register_folds(splits_file, CASES, ours[::-1]) == [6, 5]
    assert len(json.loads(splits_file.read_text())) == 7


def _runs(arm, dice, folds=(5, 6)):
    return [{"arm": arm, "num_cases": 1, "seed": s, "fold": f, "mean": m, "per_label": {"1": m, "2": m / 2}}
            for s, (f, m) in enumerate(zip(folds, dice))]


def test_aggregate_and_table_put_both_arms_side_by_side():
    table = aggregate(_runs(SCRATCH, (0.2, 0.4)) + _runs(PRETRAINED, (0.5, 0.7)))
    assert table[SCRATCH][1]["mean"]["mean"] == pytest.approx(0.3)
    assert table[PRETRAINED][1]["mean"]["std"] == pytest.approx(0.1)
    assert table[PRETRAINED][1]["per_label"]["2"]["mean"] == pytest.approx(0.3)
    text = format_table(table, {"1": "liver"})
    assert "0.300 ± 0.100" in text and "0.600 ± 0.100" in text and "+30.0 ± 0.0" in text and "2/2" in text
    assert "liver" in text


def test_gain_is_paired_by_training_subset():
    # pretraining gains on fold 5 and loses on fold 6; fold 7 has no scratch run to pair with
    runs = _runs(SCRATCH, (0.2, 0.6)) + _runs(PRETRAINED, (0.5, 0.5, 0.9), folds=(5, 6, 7))
    table = aggregate(runs)
    gain = table[PRETRAINED][1]["gain"]
    assert gain["values"] == pytest.approx([0.3, -0.1])
    assert gain["ahead"] == 1
    text = format_table(table, {})
    assert "+10.0 ± 20.0" in text and "1/2" in text


@pytest.fixture
def labeled(mass_pretraining, nnunet_env, monkeypatch):
    """The pretraining's own (labeled) phantoms, copied, as the fine-tuning dataset."""
    monkeypatch.setenv("nnUNet_compile", "false")
    copy_dataset(mass_pretraining["folders"], nnunet_env, PRETRAINED_DATASET)
    return mass_pretraining


def _args(weights, *extra):
    return ["-d", PRETRAINED_DATASET, "-p", CPU_TINY_PLANS, "-pretrained_weights", str(weights), "-device", "cpu",
            "--test_cases", "2", "--epochs", "1", "--iterations", "2", *extra]


def _nothing_trained(nnunet_env) -> bool:
    return not any(Path(nnunet_env["nnUNet_results"]).rglob("fold_*"))


def test_bad_inputs_stop_before_any_training(labeled, nnunet_env, tmp_path):
    with pytest.raises(SystemExit, match="nope.pth"):
        lowlabel_main(_args(tmp_path / "nope.pth", "--cases", "1"))
    torch.save({"state_dict": {}}, tmp_path / "foreign.pth")
    with pytest.raises(SystemExit, match="network_weights"):
        lowlabel_main(_args(tmp_path / "foreign.pth", "--cases", "1"))
    with pytest.raises(SystemExit, match="fraction 0.2 leaves no case of the 3 training cases"):
        lowlabel_main(_args(labeled["checkpoint"], "--fractions", "0.2"))
    weights = torch.load(labeled["checkpoint"], map_location="cpu", weights_only=False)["network_weights"]
    flat = {k: v[..., 0] if v.ndim == 5 else v for k, v in weights.items()}  # 3x3x3 kernels -> 3x3
    torch.save({"network_weights": flat}, tmp_path / "2d.pth")
    with pytest.raises(SystemExit, match="from a 2D configuration"):
        lowlabel_main(_args(tmp_path / "2d.pth", "--cases", "1"))
    with pytest.raises(SystemExit, match="cannot find the trainer nnUNetTrainerMASSFinetune_frozenEncoder_scratch"):
        lowlabel_main(_args(labeled["checkpoint"], "--cases", "1", "-tr", "nnUNetTrainerMASSFinetune_frozenEncoder"))
    assert _nothing_trained(nnunet_env)


@pytest.mark.slow
def test_both_arms_train_through_stock_nnunet_and_are_reported(labeled, nnunet_env, capsys):
    lowlabel_main(_args(labeled["checkpoint"], "--cases", "1", "--seeds", "0"))
    output = Path(nnunet_env["nnUNet_results"]) / PRETRAINED_DATASET / \
        f"mass_lowlabel__nnUNetTrainerMASSFinetune__{CPU_TINY_PLANS}__3d_fullres"
    report = json.loads((output / "results.json").read_text())
    assert {r["arm"] for r in report["runs"]} == {SCRATCH, PRETRAINED}
    assert all(0 <= r["mean"] <= 1 and r["fold"] == 5 and len(r["train"]) == 1 for r in report["runs"])
    assert not set(report["held_out_cases"]) & set(report["runs"][0]["train"])
    log = (output / "commands.log").read_text()
    assert log.count("-pretrained_weights") == 1 and "nnUNetTrainerMASSFinetune_scratch" in log
    assert (output / "dice_vs_labeled_cases.png").stat().st_size > 0
    assert "labeled cases" in capsys.readouterr().out
    # a second call reuses the finished runs instead of training again
    lowlabel_main(_args(labeled["checkpoint"], "--cases", "1", "--seeds", "0"))
    assert (output / "commands.log").read_text() == log
