"""Image-level features from a frozen MASS encoder, for classification probes.

Each case goes through the model's own nnU-Net preprocessing (the preprocessor class the
plans name, `run_case`), is zero-padded to at least the patch size and tiled like
nnU-Net's sliding-window prediction. The encoder runs on every tile; a case's feature is
the mean of the chosen stage(s) over all tiles' voxels (every tile counts equally, so
overlapping regions count more, as they do in nnU-Net's prediction averaging).

Pooling:
- `deepest` (default): the bottleneck's channel means, (C_last,);
- `all`: every stage's channel means, concatenated finest first, (sum C_s,);
- tokens: also keep the bottleneck's feature vectors of every tile, (N, C_last), for an
  attention-pooling head (MASS's classifier, DESIGN 1.5).

A features file (`.npz`) holds `cases`, `features` (cases, F), optionally `tokens`
(sum N, C) with `token_offsets` (cases + 1) marking each case's rows, and `metadata`
(JSON: model folder, checkpoint, encoder id, pooling settings), so a probe can refuse
features of another model.
"""
import dataclasses
import hashlib
import json
from itertools import product
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

STAGES = ("deepest", "all")
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class PoolingSettings:
    stages: str = "deepest"  # "deepest" or "all"
    tokens: bool = False  # also keep the deepest stage's tile tokens
    step_size: float = 0.5  # tile step as a fraction of the patch size, as nnUNetv2_predict's -step_size
    batch_size: int = 4  # tiles per encoder call

    def __post_init__(self):
        if self.stages not in STAGES:
            raise ValueError(f"stages must be one of {STAGES}, got {self.stages!r}")
        if not 0 < self.step_size <= 1:
            raise ValueError(f"step_size must be in (0, 1], got {self.step_size}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclasses.dataclass
class CaseFeatures:
    cases: List[str]
    features: np.ndarray  # (cases, F) float32
    tokens: Optional[List[np.ndarray]]  # per case (N_i, C) float32, or None
    metadata: dict

    @property
    def model_id(self) -> str:
        return self.metadata.get("encoder_id", "")


def encoder_id(network: torch.nn.Module) -> str:
    """A short hash of the encoder's weights: features of two files are comparable only if it matches."""
    digest = hashlib.sha256()
    for name, tensor in sorted(network.encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def preprocess_case(model, image_files: Sequence[str]) -> np.ndarray:
    """(C, *S) float32: the case as nnU-Net preprocesses it for this model's plans (transposed, cropped, resampled,
    normalised)."""
    preprocessor = model.configuration_manager.preprocessor_class(verbose=False)
    data, _, _ = preprocessor.run_case(list(image_files), None, model.plans_manager, model.configuration_manager,
                                       model.dataset_json)
    return np.asarray(data, dtype=np.float32)


def tile_slicers(image_shape: Sequence[int], patch_size: Sequence[int], step_size: float) -> List[tuple]:
    """Spatial slices of nnU-Net's sliding-window tiles over an image at least as large as the patch."""
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    steps = compute_steps_for_sliding_window(tuple(image_shape), tuple(patch_size), step_size)
    return [tuple(slice(s, s + p) for s, p in zip(start, patch_size)) for start in product(*steps)]


def pad_to_patch(data: np.ndarray, patch_size: Sequence[int]) -> np.ndarray:
    """Zero-pad (C, *S) to at least the patch size, centred, as nnU-Net's predictor does."""
    from acvl_utils.cropping_and_padding.padding import pad_nd_image

    return pad_nd_image(data, tuple(patch_size), "constant", {"constant_values": 0})


@torch.no_grad()
def encode_case(network, data: np.ndarray, patch_size: Sequence[int], settings: PoolingSettings,
                device: torch.device) -> tuple:
    """(feature vector (F,), deepest tokens (N, C) or None) of one preprocessed case (C, *S)."""
    data = pad_to_patch(data, patch_size)
    slicers = tile_slicers(data.shape[1:], patch_size, settings.step_size)
    sums, tokens = None, []
    for start in range(0, len(slicers), settings.batch_size):
        batch = np.stack([data[(slice(None), *s)] for s in slicers[start:start + settings.batch_size]])
        stages = network.encoder_features(torch.from_numpy(batch).to(device))
        if settings.stages == "deepest":
            stages = stages[-1:]
        means = [s.float().flatten(2).mean(2).sum(0) for s in stages]  # per stage (C_s,), summed over tiles
        sums = means if sums is None else [a + b for a, b in zip(sums, means)]
        if settings.tokens:
            deepest = stages[-1].float()
            tokens.append(deepest.flatten(2).transpose(1, 2).reshape(-1, deepest.shape[1]).cpu())  # (B*n, C)
    feature = torch.cat(sums).cpu().numpy() / len(slicers)
    return feature.astype(np.float32), (torch.cat(tokens).numpy() if settings.tokens else None)


def extract_features(model, cases: Dict[str, List[str]], settings: PoolingSettings = PoolingSettings(),
                     device: torch.device = torch.device("cpu"), progress: bool = True) -> CaseFeatures:
    """Features of every case ({case: channel files}) with `model`'s frozen encoder (a PretrainedModel
    or anything with its network, plans_manager, configuration_manager and dataset_json)."""
    from tqdm import tqdm

    network = model.network.to(device).eval()
    patch_size = model.configuration_manager.patch_size
    vectors, tokens = [], []
    for case in tqdm(sorted(cases), desc="features", disable=not progress):
        vector, case_tokens = encode_case(network, preprocess_case(model, cases[case]), patch_size, settings, device)
        vectors.append(vector)
        tokens.append(case_tokens)
    return CaseFeatures(sorted(cases), np.stack(vectors), tokens if settings.tokens else None,
                        feature_metadata(model, settings))


def feature_metadata(model, settings: PoolingSettings) -> dict:
    from nnunet_mass import __version__

    checkpoint = getattr(model, "checkpoint", None)
    return {"format_version": FORMAT_VERSION, "nnunet_mass_version": __version__,
            "encoder_id": encoder_id(model.network), "model_folder": str(getattr(model, "folder", "")),
            "checkpoint": str(checkpoint) if checkpoint else None, "configuration": getattr(model, "configuration", None),
            "plans_name": model.plans_manager.plans_name, "patch_size": list(model.configuration_manager.patch_size),
            "spacing": list(model.configuration_manager.spacing), **dataclasses.asdict(settings)}


def save_features(path, features: CaseFeatures) -> Path:
    """Write a features `.npz` (see the module docstring for its keys)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"cases": np.array(features.cases, dtype=str), "features": features.features,
              "metadata": np.array(json.dumps(features.metadata))}
    if features.tokens is not None:
        arrays["tokens"] = np.concatenate(features.tokens)  # (sum N_i, C)
        arrays["token_offsets"] = np.cumsum([0] + [len(t) for t in features.tokens])  # (cases + 1,)
    with open(path, "wb") as handle:  # a file handle keeps numpy from appending .npz to other names
        np.savez_compressed(handle, **arrays)
    return path


def load_features(path) -> CaseFeatures:
    """Read a features `.npz` written by `save_features` (nnUNetv2_mass_extract_features)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No features file {path}")
    with np.load(path, allow_pickle=False) as data:
        missing = {"cases", "features", "metadata"} - set(data.files)
        if missing:
            raise ValueError(f"{path} is not a features file of nnUNetv2_mass_extract_features "
                             f"(missing {sorted(missing)})")
        tokens = None
        if "tokens" in data.files:
            offsets, flat = data["token_offsets"], data["tokens"]
            tokens = [flat[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
        return CaseFeatures([str(c) for c in data["cases"]], data["features"], tokens,
                            json.loads(str(data["metadata"])))
