"""Frozen-encoder features and classification probes (nnUNetv2_mass_extract_features, nnUNetv2_mass_probe)."""
import csv
import dataclasses
import shutil

import numpy as np
import pytest
import torch

from nnunet_mass.downstream import probe as probes
from nnunet_mass.downstream.cases import image_cases
from nnunet_mass.downstream.features import (CaseFeatures, PoolingSettings, encode_case, extract_features,
                                             load_features, pad_to_patch, save_features, tile_slicers)
from nnunet_mass.downstream.model import load_pretrained_model


@pytest.fixture(scope="module")
def model(mass_pretraining):
    return load_pretrained_model(mass_pretraining["model_folder"])


@pytest.fixture(scope="module")
def two_cases(mass_pretraining, model):
    cases = image_cases(mass_pretraining["raw"] / "imagesTr", model.dataset_json["file_ending"], 1)
    return {case: cases[case] for case in sorted(cases)[:2]}


def write_csv(path, rows, header=("case", "label")):
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows([header, *rows])
    return path


def gaussian_features(num_cases=40, dim=16, shift=2.5, seed=0, encoder="enc") -> tuple:
    """Two unit Gaussians whose means differ by `shift` along 4 of the features (distance 2 * shift):
    the Bayes classifier reaches AUROC 0.9996 and accuracy 0.994 at shift 2.5; chance at shift 0."""
    rng = np.random.default_rng(seed)
    labels = np.arange(num_cases) % 2
    matrix = rng.normal(size=(num_cases, dim)).astype(np.float32)
    matrix[:, :4] += shift * labels[:, None]
    cases = [f"c{i:03d}" for i in range(num_cases)]
    metadata = {"encoder_id": encoder, "stages": "deepest", "step_size": 0.5}
    return CaseFeatures(cases, matrix, None, metadata), {c: str(v) for c, v in zip(cases, labels)}


def lesion_tokens(num_cases=24, tokens=20, channels=8, seed=0) -> tuple:
    """Positive cases hide 3 shifted tokens among noise ones: invisible to a mean, visible to attention."""
    rng = np.random.default_rng(seed)
    features, labels = gaussian_features(num_cases, channels, shift=0.0, seed=seed)
    token_list = []
    for case in features.cases:
        t = rng.normal(size=(tokens + int(rng.integers(0, 5)), channels)).astype(np.float32)
        if labels[case] == "1":
            t[:3, 0] += 6.0  # (tokens, channels)
        token_list.append(t)
    return dataclasses.replace(features, tokens=token_list), labels


# --- features -------------------------------------------------------------------------------------------------


def test_features_have_the_stage_widths_and_are_deterministic(model, two_cases):
    channels = list(model.network.encoder.output_channels)
    deepest = extract_features(model, two_cases, progress=False)
    again = extract_features(model, two_cases, progress=False)
    every = extract_features(model, two_cases, PoolingSettings(stages="all"), progress=False)
    assert deepest.cases == sorted(two_cases) and deepest.features.shape == (2, channels[-1])
    np.testing.assert_array_equal(deepest.features, again.features)
    assert every.features.shape == (2, sum(channels))
    np.testing.assert_allclose(every.features[:, -channels[-1]:], deepest.features, rtol=1e-5, atol=1e-6)
    assert not np.allclose(deepest.features[0], deepest.features[1])  # the cases differ, so must their features
    assert deepest.metadata["encoder_id"] and deepest.metadata["patch_size"] == model.configuration_manager.patch_size


def test_tiles_cover_an_image_larger_than_the_patch_and_are_averaged(model):
    patch = model.configuration_manager.patch_size
    image = np.random.default_rng(0).normal(size=(1, *(p + 8 for p in patch))).astype(np.float32)
    slicers = tile_slicers(image.shape[1:], patch, 0.5)
    assert len(slicers) == 8 and {s[0].start for s in slicers} == {0, 8}
    covered = np.zeros(image.shape[1:], dtype=int)
    for s in slicers:
        covered[s] += 1
    assert covered.min() >= 1

    settings = PoolingSettings(tokens=True, batch_size=3)  # 3 + 3 + 2 tiles: a partial last batch
    feature, tokens = encode_case(model.network, image, patch, settings, torch.device("cpu"))
    with torch.no_grad():
        per_tile = [model.network.encoder_features(torch.from_numpy(image[(slice(None), *s)][None]))[-1]
                    for s in slicers]
    np.testing.assert_allclose(feature, torch.stack([t.mean((2, 3, 4))[0] for t in per_tile]).mean(0).numpy(),
                               rtol=1e-4, atol=1e-5)
    assert tokens.shape == (8 * per_tile[0][0, 0].numel(), feature.shape[0])


def test_small_images_are_padded_to_the_patch():
    assert pad_to_patch(np.ones((1, 20, 40, 8), np.float32), (32, 32, 32)).shape == (1, 32, 40, 32)


def test_features_file_round_trip(tmp_path):
    features, _ = lesion_tokens(num_cases=4)
    loaded = load_features(save_features(tmp_path / "f.npz", features))
    assert loaded.cases == features.cases and loaded.metadata == features.metadata
    np.testing.assert_array_equal(loaded.features, features.features)
    assert all(np.array_equal(a, b) for a, b in zip(loaded.tokens, features.tokens))


# --- probes ---------------------------------------------------------------------------------------------------


def test_separable_features_reach_an_auroc_near_one():
    features, labels = gaussian_features()
    report = probes.fit_probe(features, labels, folds=5)["cross_validation"]
    assert report["auroc"]["mean"] > 0.95 and report["balanced_accuracy"]["mean"] > 0.85
    assert len(report["auroc"]["folds"]) == 5 and report["f1_macro"]["mean"] > 0.85


def test_random_labels_stay_near_chance():
    aurocs = []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        y = rng.integers(0, 2, 60)
        aurocs.append(probes.cross_validate("logistic", rng.normal(size=(60, 16)), y, 5, seed)["auroc"]["mean"])
    assert abs(np.mean(aurocs) - 0.5) < 0.1 and max(aurocs) < 0.7


def test_three_classes_use_one_vs_rest_auroc():
    rng = np.random.default_rng(1)
    y = np.arange(45) % 3
    x = rng.normal(size=(45, 8)) + 4.0 * np.eye(8)[y]
    report = probes.cross_validate("logistic", x, y, 3, 0)
    assert report["auroc"]["mean"] > 0.95 and report["balanced_accuracy"]["mean"] > 0.85


def test_attention_head_finds_the_few_lesion_tokens():
    features, labels = lesion_tokens()
    report = probes.fit_probe(features, labels, "attention", folds=3)["cross_validation"]
    assert report["auroc"]["mean"] > 0.9 and report["balanced_accuracy"]["mean"] > 0.8
    shuffled = dict(zip(labels, np.random.default_rng(0).permutation(list(labels.values()))))
    assert probes.fit_probe(features, shuffled, "attention", folds=3)["cross_validation"]["auroc"]["mean"] < 0.75


@pytest.mark.parametrize("head", ["logistic", "attention"])
def test_saved_probe_predicts_the_same(tmp_path, head):
    features, labels = lesion_tokens(num_cases=12)
    fitted = probes.fit_probe(features, labels, head, folds=0)
    loaded = probes.load_probe(probes.save_probe(tmp_path / "probe.joblib", fitted))
    cases, predicted, proba = probes.predict(loaded, features)
    expected = fitted["estimator"].predict_proba(probes.head_inputs(head, features, "f"))
    np.testing.assert_allclose(proba, expected, rtol=1e-6)
    assert cases == features.cases and set(predicted) <= {"0", "1"} and fitted["classes"] == ["0", "1"]
    assert fitted["cross_validation"] is None


@pytest.mark.parametrize("rows, header, message", [
    ([("c000", "1")], ("case", "diagnosis"), r"needs a header with the columns case,label"),
    ([("c000", "1"), ("x1", "0"), ("x2", "0")], ("case", "label"), r"names 2 case\(s\) that .* x1, x2"),
    ([("c000", "1"), ("c001", "1")], ("case", "label"), "single class"),
    ([("c000", "1"), ("c000", "0")], ("case", "label"), "c000 has two labels"),
    ([("c000", "")], ("case", "label"), "line 2: empty case or label"),
    ([], ("case", "label"), "names no cases"),
])
def test_bad_label_files_are_refused_by_name(tmp_path, rows, header, message):
    features, _ = gaussian_features()
    path = write_csv(tmp_path / "bad_labels.csv", rows, header)
    with pytest.raises(probes.ProbeError, match=f"bad_labels.csv.*{message}"):
        probes.fit_probe(features, probes.read_labels(path), csv_path=path, features_path="f.npz")


def test_too_many_folds_name_the_smallest_class(tmp_path):
    features, labels = gaussian_features(num_cases=8)
    with pytest.raises(probes.ProbeError, match="class 0 has 4 case.*--folds between 2 and 4"):
        probes.fit_probe(features, labels, folds=5, csv_path="labels.csv")


def test_predict_refuses_features_of_another_model_or_pooling():
    features, labels = lesion_tokens(num_cases=12)
    fitted = probes.fit_probe(features, labels, folds=0)
    other = dataclasses.replace(features, metadata={**features.metadata, "encoder_id": "other"})
    with pytest.raises(probes.ProbeError, match="new.npz was extracted with another encoder"):
        probes.predict(fitted, other, "new.npz", "probe.pkl")
    pooled = dataclasses.replace(features, metadata={**features.metadata, "stages": "all"})
    with pytest.raises(probes.ProbeError, match="stages=all"):
        probes.predict(fitted, pooled, "new.npz", "probe.pkl")
    with pytest.raises(probes.ProbeError, match="has 7 features per case"):
        probes.predict(fitted, dataclasses.replace(features, features=features.features[:, :7]), "new.npz")
    with pytest.raises(probes.ProbeError, match="new.npz holds no tokens"):
        probes.fit_probe(dataclasses.replace(features, tokens=None), labels, "attention", 0, 0, "new.npz")


# --- commands -------------------------------------------------------------------------------------------------


def test_commands_end_to_end_on_phantoms(mass_pretraining, tmp_path, capsys):
    from nnunet_mass.cli import extract_features, probe

    images = tmp_path / "images"
    images.mkdir()
    for source in sorted((mass_pretraining["raw"] / "imagesTr").glob("*_0000.nii.gz"))[:4]:
        shutil.copy(source, images)
    cases = sorted(p.name[:-len("_0000.nii.gz")] for p in images.iterdir())
    model_folder = str(mass_pretraining["model_folder"])
    extract_features.main(["-m", model_folder, "-i", str(images), "-o", str(tmp_path / "f.npz"), "--tokens",
                           "--stages", "all", "-device", "cpu"])
    features = load_features(tmp_path / "f.npz")
    assert features.cases == cases and len(features.tokens) == 4
    assert features.metadata["checkpoint"] == str(mass_pretraining["checkpoint"])

    labels = write_csv(tmp_path / "labels.csv", [(c, "big" if i % 2 else "small") for i, c in enumerate(cases)])
    for head in ("logistic", "attention"):
        probe.main(["fit", "--features", str(tmp_path / "f.npz"), "--labels", str(labels), "-o",
                    str(tmp_path / f"{head}.pkl"), "--head", head, "--folds", "2"])
        assert "auroc" in capsys.readouterr().out
        probe.main(["predict", "--probe", str(tmp_path / f"{head}.pkl"), "--features", str(tmp_path / "f.npz"),
                    "-o", str(tmp_path / f"{head}.csv")])
        with open(tmp_path / f"{head}.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert [r["case"] for r in rows] == cases and {r["label"] for r in rows} <= {"big", "small"}
        assert all(abs(float(r["probability_big"]) + float(r["probability_small"]) - 1) < 1e-4 for r in rows)

    unknown = write_csv(tmp_path / "typo.csv", [(cases[0], "a"), ("phantom_typo", "b")])
    with pytest.raises(SystemExit, match="typo.csv names 1 case.*phantom_typo"):
        probe.main(["fit", "--features", str(tmp_path / "f.npz"), "--labels", str(unknown), "-o",
                    str(tmp_path / "p.pkl")])
    with pytest.raises(SystemExit, match="holds no images named CASE_0000.nii.gz"):
        extract_features.main(["-m", model_folder, "-i", str(tmp_path), "-o", str(tmp_path / "g.npz")])
