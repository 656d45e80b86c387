"""Pretrained-model bundles: export -> import round trip, model card, and refusal of foreign or damaged zips."""
import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from nnunet_mass.bundles.bundle import MANIFEST, BundleError, bundle_network_weights, is_bundle
from nnunet_mass.bundles.export import export_pretrained
from nnunet_mass.bundles.install import import_pretrained
from nnunet_mass.cli.export_pretrained import main as export_main
from nnunet_mass.cli.import_pretrained import main as import_main
from nnunet_mass.downstream.model import load_pretrained_model
from nnunet_mass.training.transfer import read_network_weights
from nnunet_mass.unlabeled.pool import SOURCES_KEY

MODEL = "Dataset141_PretrainedPhantoms/nnUNetTrainerMASSPretrain__nnUNetPlans_cpuTiny__3d_fullres"


def load(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def all_entries(root: Path) -> list[str]:
    """Everything under `root`, hidden staging folders included."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture(scope="module")
def bundle(mass_pretraining, tmp_path_factory) -> Path:
    """The fixture pretraining exported through the CLI, as a user would (its folders are only read)."""
    output = tmp_path_factory.mktemp("bundle") / "model.zip"
    with pytest.MonkeyPatch.context() as patch:
        for variable, value in mass_pretraining["folders"].items():
            patch.setenv(variable, value)
        export_main(["-d", "141", "-c", "3d_fullres", "-p", "nnUNetPlans_cpuTiny", "-o", str(output)])
    return output


def rewritten(source: Path, target: Path, edit) -> Path:
    """A copy of zip `source` with `edit({name: bytes})` applied to its members."""
    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    edit(members)
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return target


def test_round_trip_keeps_weights_plans_and_metadata(mass_pretraining, bundle, nnunet_env):
    folder = import_pretrained(bundle)
    assert folder == Path(nnunet_env["nnUNet_results"]) / MODEL
    original, imported = load(mass_pretraining["checkpoint"]), load(folder / "fold_0" / "checkpoint_final.pth")
    assert imported["network_weights"].keys() == original["network_weights"].keys()
    assert all(torch.equal(v, original["network_weights"][k]) for k, v in imported["network_weights"].items())
    assert imported["mass"] == original["mass"] and imported["trainer_name"] == "nnUNetTrainerMASSPretrain"
    assert "optimizer_state" not in imported and "raw_network_weights" not in imported  # reduced for sharing
    for name in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        assert (folder / name).read_bytes() == (mass_pretraining["model_folder"] / name).read_bytes()

    model = load_pretrained_model(folder)  # the in-context commands find the imported model
    state = model.network.state_dict()
    assert all(torch.equal(state[k], v) for k, v in original["network_weights"].items())
    assert model.configuration == "3d_fullres" and model.metadata["iterations_done"] == 6


def test_model_card_and_manifest(bundle):
    with zipfile.ZipFile(bundle) as archive:
        card = archive.read("MODEL_CARD.md").decode()
        manifest = json.loads(archive.read(MANIFEST))
    assert "# MASS pretrained model: Dataset141_PretrainedPhantoms" in card
    for line in ("- iterations: 6", "- masks per sample (K): 13", "- crop size (voxels, z y x): 32x32x32",
                 "- one dataset (PretrainedPhantoms), 5 training case(s); not a pool",
                 "- in-context Dice at the end: not recorded", "patch size: [32, 32, 32]"):
        assert line in card
    assert manifest["format"] == "nnunet-mass-pretrained-bundle" and manifest["configuration"] == "3d_fullres"
    assert manifest["checkpoint"] == "fold_0/checkpoint_final.pth" and manifest["nnunet_version"].startswith("2.")
    assert set(manifest["files"]) == {"MODEL_CARD.md", "plans.json", "dataset.json", "dataset_fingerprint.json",
                                      "fold_0/checkpoint_final.pth"}


def test_card_lists_pooled_sources_and_the_final_in_context_dice(mass_pretraining, tmp_path, nnunet_env):
    folder = tmp_path / "model"
    shutil.copytree(mass_pretraining["model_folder"], folder)
    dataset_json = json.loads((folder / "dataset.json").read_text())
    dataset_json[SOURCES_KEY] = {"a_1": "Dataset011_LiverCT", "a_2": "Dataset011_LiverCT", "b_1": "Dataset012_Kid"}
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    (folder / "fold_0" / "validation").mkdir()
    summary = {"metric": "in-context Dice", "mean_dice": 0.4321, "num_tasks": 12}
    (folder / "fold_0" / "validation" / "summary.json").write_text(json.dumps(summary))

    output = export_pretrained(folder, tmp_path / "pool.zip")
    card = zipfile.ZipFile(output).read("MODEL_CARD.md").decode()
    assert "- pooled from 2 dataset(s), 3 case(s) in all:" in card
    assert "  - Dataset011_LiverCT: 2 case(s)" in card and "  - Dataset012_Kid: 1 case(s)" in card
    assert "- in-context Dice at the end: 0.4321 over 12 tasks (in-context Dice)" in card
    imported = import_pretrained(output)
    assert json.loads((imported / "fold_0" / "validation" / "summary.json").read_text()) == summary
    assert (imported / "MODEL_CARD.md").read_text() == card


def test_bundle_weights_feed_pretrained_weights_loading(mass_pretraining, bundle):
    """What `-pretrained_weights model.zip` reads through our loader."""
    ema = load(mass_pretraining["checkpoint"])["network_weights"]
    assert is_bundle(bundle) and not is_bundle(mass_pretraining["checkpoint"]) and not is_bundle(bundle.parent / "x")
    for weights in (bundle_network_weights(bundle), read_network_weights(str(bundle))):
        assert weights.keys() == ema.keys() and all(torch.equal(v, ema[k]) for k, v in weights.items())


def test_import_does_not_overwrite_without_the_flag(bundle, nnunet_env, capsys):
    import_main([str(bundle)])
    folder = Path(nnunet_env["nnUNet_results"]) / MODEL
    (folder / "fold_0" / "my_notes.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="nnUNetv2_mass_import_pretrained: error: .*already exists; pass --overwrite"):
        import_main([str(bundle)])
    assert (folder / "fold_0" / "my_notes.txt").read_text() == "keep me"
    import_main([str(bundle), "--overwrite"])
    assert not (folder / "fold_0" / "my_notes.txt").exists()
    assert (folder / "fold_0" / "checkpoint_final.pth").is_file()
    assert not list(Path(nnunet_env["nnUNet_results"]).rglob(".*"))  # no staging or set-aside folder left over
    assert "Imported the pretrained model into" in capsys.readouterr().out


def _change_plans(members):
    plans = json.loads(members["plans.json"])
    plans["configurations"]["3d_fullres"]["patch_size"] = [64, 64, 64]
    members["plans.json"] = json.dumps(plans).encode()


def _escape_folder(members):
    manifest = json.loads(members[MANIFEST])
    manifest["files"]["../../evil.json"] = manifest["files"].pop("dataset.json")
    members[MANIFEST] = json.dumps(manifest).encode()


def _future_format(members):
    manifest = json.loads(members[MANIFEST])
    manifest["format_version"] = 99
    members[MANIFEST] = json.dumps(manifest).encode()


@pytest.mark.parametrize("edit, message", [
    (_change_plans, "is damaged: plans.json does not match the manifest's checksum"),
    (lambda members: members.pop("fold_0/checkpoint_final.pth"), "is damaged: fold_0/checkpoint_final.pth is listed"),
    (_escape_folder, "lists paths outside the model folder"),
    (_future_format, "is bundle format version 99; .* Upgrade nnunet-mass"),
    (lambda members: members.pop(MANIFEST), "is not a pretrained-model bundle: it has no mass_bundle.json"),
])
def test_damaged_or_foreign_zips_are_refused_and_nothing_is_written(bundle, tmp_path, nnunet_env, edit, message):
    broken = rewritten(bundle, tmp_path / "broken.zip", edit)
    with pytest.raises(BundleError, match=message):
        import_pretrained(broken)
    assert all_entries(Path(nnunet_env["nnUNet_results"])) == []


def test_truncated_and_non_zip_files_are_refused(bundle, tmp_path, nnunet_env):
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(bundle.read_bytes()[: bundle.stat().st_size // 2])
    (tmp_path / "notes.zip").write_text("not a zip at all")
    nnunet_export = tmp_path / "nnunet_export.zip"  # what nnUNetv2_export_model_to_zip writes: no manifest
    with zipfile.ZipFile(nnunet_export, "w") as archive:
        archive.writestr(f"{MODEL}/fold_0/checkpoint_final.pth", b"weights")
    for path, message in ((truncated, "is not a readable zip file"), (tmp_path / "notes.zip", "not a readable zip"),
                          (nnunet_export, "nnUNetv2_install_pretrained_model_from_zip")):
        with pytest.raises(SystemExit, match=message):
            import_main([str(path)])
        assert not is_bundle(path)
    assert all_entries(Path(nnunet_env["nnUNet_results"])) == []


def test_export_refuses_a_checkpoint_without_mass_metadata(mass_pretraining, tmp_path):
    folder = tmp_path / "stock"
    shutil.copytree(mass_pretraining["model_folder"], folder)
    checkpoint = load(folder / "fold_0" / "checkpoint_final.pth")
    del checkpoint["mass"]
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(BundleError, match="not a MASS pretraining checkpoint .*nnUNetv2_export_model_to_zip"):
        export_pretrained(folder, tmp_path / "stock.zip")
    assert not (tmp_path / "stock.zip").exists()


def test_export_cli_names_a_missing_model_folder(mass_pretraining, monkeypatch, tmp_path):
    for variable, value in mass_pretraining["folders"].items():
        monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit, match="no model folder .*nnUNetTrainerMASSPretrain__nnUNetPlans__3d_fullres"):
        export_main(["-d", "141", "-o", str(tmp_path / "x.zip")])
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("module", ["export_pretrained", "import_pretrained", "adopt"])
def test_every_command_explains_itself(module, capsys):
    import importlib

    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(f"nnunet_mass.cli.{module}").main(["--help"])
    assert exit_info.value.code == 0 and "bundle" in capsys.readouterr().out
