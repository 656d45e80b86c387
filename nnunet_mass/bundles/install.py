"""nnUNetv2_mass_import_pretrained: a bundle zip -> an nnU-Net model folder in nnUNet_results.

The model lands where nnU-Net itself would have written it,
`nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>/fold_<f>/`, so stock
commands (`-pretrained_weights <that checkpoint>`) and the in-context commands
(`load_pretrained_model`) find it. Every file is verified and written into a hidden
staging folder first, then renamed into place: a damaged zip or a full disk leaves
nothing behind, and an existing model is only replaced with `overwrite`.
"""
import json
import os
from pathlib import Path

from nnunet_mass.bundles.bundle import MANIFEST, BundleError, OpenBundle
from nnunet_mass.unlabeled.prepare import existing_dataset_folders, move_into_place, staging_folder


def import_pretrained(bundle_file, results_root=None, overwrite: bool = False) -> Path:
    """Unpack `bundle_file` under `results_root` (default $nnUNet_results); returns the model folder."""
    results_root = _results_root(results_root)
    with OpenBundle(bundle_file) as bundle:
        manifest = bundle.manifest
        dataset_folder = results_root / manifest.dataset_name
        target = dataset_folder / manifest.model_folder_name
        if target.exists() and not overwrite:
            raise BundleError(f"{target} already exists; pass --overwrite to replace it (the whole model folder) "
                              f"with the bundle's model")
        files = bundle.read_all()  # every checksum is checked before anything is written
    _warn_about_id_clashes(manifest.dataset_name)
    created_dataset_folder = not dataset_folder.exists()
    try:
        with staging_folder(results_root, manifest.dataset_name) as staging:
            files[MANIFEST] = json.dumps(manifest.content, indent=1).encode()  # provenance beside the model
            for name, data in files.items():
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                (staging / name).write_bytes(data)
            dataset_folder.mkdir(exist_ok=True)
            move_into_place(staging, target, [target] if target.exists() else [])
    except BaseException:
        if created_dataset_folder and dataset_folder.is_dir() and not any(dataset_folder.iterdir()):
            dataset_folder.rmdir()
        raise
    _print_next_steps(target, manifest)
    return target


def _results_root(results_root) -> Path:
    if results_root is None:
        results_root = os.environ.get("nnUNet_results")
        if not results_root:
            raise BundleError("nnUNet_results is not set: export nnUNet_results=/path/to/nnUNet_results")
    results_root = Path(results_root)
    results_root.mkdir(parents=True, exist_ok=True)
    return results_root


def _warn_about_id_clashes(dataset_name: str) -> None:
    """nnU-Net resolves `-d <id>` across raw/preprocessed/results and fails on two names for one id.

    Using the model by path still works, so this warns instead of refusing.
    """
    from nnunetv2.utilities.dataset_name_id_conversion import convert_dataset_name_to_id

    dataset_id = convert_dataset_name_to_id(dataset_name)
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        if not os.environ.get(variable):
            continue
        for other in existing_dataset_folders(Path(os.environ[variable]), dataset_id):
            if other.name != dataset_name:
                print(f"warning: {other} uses dataset id {dataset_id} under another name: nnU-Net commands that "
                      f"take -d {dataset_id} will fail. Use the imported model by its path.")


def _print_next_steps(target: Path, manifest) -> None:
    checkpoint = target / manifest.checkpoint
    print(f"Imported the pretrained model into {target}\n"
          f"  checkpoint: {checkpoint}\n"
          f"  fine-tune on your dataset: nnUNetv2_mass_adopt -m {target} -d <dataset id>"
          + (f" -f {manifest.content['fold']} -chk {checkpoint.name}" if checkpoint.name != "checkpoint_final.pth"
             else ""))

