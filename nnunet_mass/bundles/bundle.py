"""The pretrained-model bundle: one zip that carries a MASS pretraining to another machine.

Layout (paths inside the zip are those the files get in the imported model folder
`nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>/`):

    mass_bundle.json                  manifest: format name/version, model identity, versions,
                                      and the SHA-256 of every other file
    MODEL_CARD.md                     what the model was pretrained on, for people
    plans.json, dataset.json, dataset_fingerprint.json
    fold_<f>/<checkpoint>.pth         network_weights (EMA), init_args, trainer_name, mass metadata
    fold_<f>/validation/summary.json  the final in-context evaluation, if the run wrote one

The manifest's format name makes foreign zips (an nnU-Net model export, any archive)
recognisable, and the hashes catch truncated or edited files before anything is written.
The checkpoint loads with `torch.load(weights_only=True)`: reading a bundle never
unpickles arbitrary objects.
"""
import hashlib
import io
import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch

FORMAT = "nnunet-mass-pretrained-bundle"
FORMAT_VERSION = 1
MANIFEST = "mass_bundle.json"
MODEL_CARD = "MODEL_CARD.md"
_IDENTITY_KEYS = ("dataset_name", "trainer_name", "plans_name", "configuration", "fold", "checkpoint")
_DATASET_NAME = re.compile(r"^Dataset\d{3}_[A-Za-z0-9_-]+$")
_FOLDER_PART = re.compile(r"^[A-Za-z0-9_.-]+$")


class BundleError(RuntimeError):
    """Not a bundle, a damaged one, or one that cannot be used here; the message says which and why."""


@dataclass(frozen=True)
class Manifest:
    content: dict

    @property
    def model_folder_name(self) -> str:
        """nnU-Net's results folder name: <trainer>__<plans>__<configuration>."""
        c = self.content
        return f"{c['trainer_name']}__{c['plans_name']}__{c['configuration']}"

    @property
    def dataset_name(self) -> str:
        return self.content["dataset_name"]

    @property
    def configuration(self) -> str:
        return self.content["configuration"]

    @property
    def checkpoint(self) -> str:
        """Path of the checkpoint inside the bundle (and inside the imported model folder)."""
        return self.content["checkpoint"]

    @property
    def files(self) -> dict:
        return self.content["files"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_bundle(output_file, identity: dict, files: dict, model_card: str) -> Path:
    """Write `files` {path in zip: bytes} with a manifest and the model card to `output_file`.

    Written to a hidden temporary file and renamed, so a crash never leaves a zip that
    looks complete.
    """
    output_file = Path(output_file)
    files = {**files, MODEL_CARD: model_card.encode()}
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **identity,
                "files": {name: sha256(data) for name, data in sorted(files.items())}}
    check_manifest(manifest, where=str(output_file))
    partial = output_file.with_name(f".{output_file.name}.partial")
    try:
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(MANIFEST, json.dumps(manifest, indent=1))
            for name, data in sorted(files.items()):
                archive.writestr(name, data)
        os.replace(partial, output_file)
    finally:
        partial.unlink(missing_ok=True)
    return output_file


def is_bundle(path) -> bool:
    """Cheap: True if `path` is a zip whose manifest names this format (no hashes checked).

    nnU-Net checkpoints are zip files too (torch's format), without our manifest.
    """
    try:
        if not os.path.isfile(path) or not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            if MANIFEST not in archive.namelist():
                return False
            return json.loads(archive.read(MANIFEST)).get("format") == FORMAT
    except (OSError, zipfile.BadZipFile, ValueError, AttributeError):
        return False


class OpenBundle:
    """A bundle opened for reading; every file read is checked against the manifest's hash."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise BundleError(f"{self.path} does not exist")
        try:
            self._archive = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as error:
            raise BundleError(f"{self.path} is not a readable zip file ({error}); "
                              f"a pretrained-model bundle is made by nnUNetv2_mass_export_pretrained") from None
        try:
            self.manifest = Manifest(_read_manifest(self._archive, self.path))
        except BaseException:
            self._archive.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._archive.close()

    def read(self, name: str) -> bytes:
        if name not in self.manifest.files:
            raise BundleError(f"{self.path}: the manifest lists no file {name}")
        try:
            data = self._archive.read(name)
        except KeyError:
            raise BundleError(f"{self.path} is damaged: {name} is listed in the manifest but missing") from None
        except (zipfile.BadZipFile, OSError, EOFError) as error:  # CRC errors, truncation
            raise BundleError(f"{self.path} is damaged: {name} cannot be read ({error})") from None
        if sha256(data) != self.manifest.files[name]:
            raise BundleError(f"{self.path} is damaged: {name} does not match the manifest's checksum")
        return data

    def read_json(self, name: str) -> dict:
        return json.loads(self.read(name))

    def checkpoint(self) -> dict:
        return load_checkpoint_bytes(self.read(self.manifest.checkpoint), f"{self.path}:{self.manifest.checkpoint}")

    def read_all(self) -> dict:
        """{name: bytes} of every listed file, all verified (raises on the first bad one)."""
        return {name: self.read(name) for name in self.manifest.files}


def load_checkpoint_bytes(data: bytes, where: str) -> dict:
    """A bundle checkpoint, CPU tensors, without unpickling arbitrary objects."""
    try:
        checkpoint = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for pickles it refuses
        raise BundleError(f"{where} cannot be loaded as a plain checkpoint: {error}") from None
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise BundleError(f"{where} has no 'network_weights'")
    return checkpoint


def bundle_network_weights(path) -> dict:
    """`network_weights` of the bundle's checkpoint (the EMA of the pretraining), CPU tensors."""
    with OpenBundle(path) as bundle:
        return bundle.checkpoint()["network_weights"]


def _read_manifest(archive: zipfile.ZipFile, path: Path) -> dict:
    try:
        manifest = json.loads(archive.read(MANIFEST))
    except KeyError:
        raise BundleError(f"{path} is not a pretrained-model bundle: it has no {MANIFEST}. Bundles are made by "
                          f"nnUNetv2_mass_export_pretrained (an nnU-Net model export is installed with "
                          f"nnUNetv2_install_pretrained_model_from_zip instead)") from None
    except (ValueError, zipfile.BadZipFile, OSError, EOFError) as error:
        raise BundleError(f"{path} is damaged: its {MANIFEST} cannot be read ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path} is not a pretrained-model bundle: {MANIFEST} does not name the format {FORMAT}")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BundleError(f"{path} is bundle format version {version}; this nnunet-mass reads up to "
                          f"{FORMAT_VERSION}. Upgrade nnunet-mass to use it.")
    check_manifest(manifest, where=str(path))
    return manifest


def check_manifest(manifest: dict, where: str) -> None:
    """The identity fields exist and are safe to use as folder names; listed paths stay inside the folder."""
    missing = [key for key in (*_IDENTITY_KEYS, "files") if key not in manifest]
    if missing:
        raise BundleError(f"{where}: the manifest lacks {', '.join(missing)}")
    if not _DATASET_NAME.match(str(manifest["dataset_name"])):
        raise BundleError(f"{where}: dataset name {manifest['dataset_name']!r} is not of the form DatasetXXX_Name")
    for key in ("trainer_name", "plans_name", "configuration", "fold"):
        value = str(manifest[key])
        if not _FOLDER_PART.match(value) or "__" in value:
            raise BundleError(f"{where}: {key} {value!r} cannot be part of an nnU-Net folder name")
    files = manifest["files"]
    if not isinstance(files, dict) or not all(_safe_member(name) for name in files):
        raise BundleError(f"{where}: the manifest lists paths outside the model folder")
    for required in ("plans.json", "dataset.json", manifest["checkpoint"]):
        if required not in files:
            raise BundleError(f"{where}: the manifest lists no {required}")


def _safe_member(name) -> bool:
    path = PurePosixPath(str(name))
    return (isinstance(name, str) and not path.is_absolute() and ".." not in path.parts and "\\" not in name
            and name not in (MANIFEST, "") and all(_FOLDER_PART.match(part) for part in path.parts))
