"""Few-shot in-context segmentation with a MASS pretraining model: no training, only references.

A reference is an image and a label mask. Each label value of the mask becomes one task:
the pretrained network encodes (image, binary mask) into task tokens once, and segments
the same structure in any query image. Several references of one label are averaged
(`InContextNetwork.average_tasks`), which is MASS's few-shot ensembling.

Everything around the network is nnU-Net's own machinery, driven by the model's plans:
- reading and writing: the plans' image reader/writer;
- preprocessing: the plans' preprocessor (`run_case_npy`); the reference mask goes in as
  the segmentation, so it is cropped and resampled exactly as nnU-Net treats labels;
- query inference: `nnUNetPredictor`'s Gaussian-weighted sliding window (no mirroring:
  the pretext never mirrors), with a wrapper whose forward is `network.segment(x, tokens)`;
- back to the original geometry: `convert_predicted_logits_to_segmentation_with_correct_shape`
  with a region-style label manager (one independent sigmoid channel per task), so logits
  are resampled before the sigmoid, exactly like nnU-Net's region-based models;
- optional post-processing: nnU-Net's largest-connected-component function.

Reference window: the network was pretrained on windows of the checkpoint's crop size
(reference and query alike), so each label is encoded from one window of that size centred
on the label's bounding box in the preprocessed reference (zero-padded where the image is
smaller, like nnU-Net pads queries). A structure larger than the window is seen partially;
its context matches what the pretext trained on. The query's sliding window has the same size.

A voxel is foreground where a task's sigmoid exceeds 0.5; where several tasks claim it, the
most probable wins. Tasks are independent: a label's probabilities do not depend on which
other labels are segmented with it.
"""
import contextlib
import io
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from nnunet_mass.downstream.cases import PathLike, as_file_list, image_cases
from nnunet_mass.downstream.model import PretrainedModel

FOREGROUND_THRESHOLD = 0.5


class InContextInputError(ValueError):
    """A reference or query that cannot be used; the message names the file."""


class TaskConditionedNetwork(nn.Module):
    """Image in, one logit map per task out: what nnUNetPredictor's sliding window expects."""

    def __init__(self, network: nn.Module, tokens: torch.Tensor):
        super().__init__()
        self.network = network
        self.register_buffer("tokens", tokens, persistent=False)  # (1, K, stages, T, d); moves with .to()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, *S) -> logits (B, K, *S)"""
        return self.network.segment(x, self.tokens.expand(x.shape[0], *self.tokens.shape[1:]))


def geometry_differences(image_properties: dict, mask_properties: dict) -> List[str]:
    """Names of the geometry entries (spacing, origin, direction, affine...) that differ between
    two reader property dicts; origins are compared to 1e-3 mm, the rest relatively to 1e-5."""
    differences = []
    for key, value in image_properties.items():
        if key not in mask_properties:
            continue
        if isinstance(value, dict):
            differences += [f"{key}.{name}" for name in geometry_differences(value, mask_properties[key])]
        elif not _close(value, mask_properties[key]):
            differences.append(key)
    return differences


def _close(a, b) -> bool:
    try:
        a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    except (TypeError, ValueError):
        return True  # not a geometry value
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-5, atol=1e-3))


def window_around(mask: np.ndarray, window: Sequence[int]) -> tuple:
    """Slices of a `window`-sized box centred on the bounding box of `mask` (spatial axes only),
    shifted to lie inside the array (which must be at least `window` along every axis)."""
    where = np.argwhere(mask)
    centre = (where.min(0) + where.max(0)) // 2
    starts = np.clip(centre - np.asarray(window) // 2, 0, np.asarray(mask.shape) - np.asarray(window))
    return tuple(slice(int(s), int(s) + int(w)) for s, w in zip(starts, window))


def combine_tasks(probabilities: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """Label map from per-task probabilities (K, *S): label k where its probability exceeds 0.5
    and no other task's is higher; background elsewhere."""
    labels = np.asarray(labels)
    dtype = np.uint8 if labels.max(initial=0) < 256 else np.uint16
    label_map = labels[probabilities.argmax(0)].astype(dtype)
    label_map[probabilities.max(0) <= FOREGROUND_THRESHOLD] = 0
    return label_map


def keep_largest_components(label_map: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """Each label reduced to its largest connected component (nnU-Net's post-processing);
    removed voxels become background."""
    from nnunetv2.postprocessing.remove_connected_components import (
        remove_all_but_largest_component_from_segmentation)

    for label in labels:
        if np.any(label_map == label):
            label_map = remove_all_but_largest_component_from_segmentation(label_map, int(label))
    return label_map


def task_dataset_json(dataset_json: dict, labels: Sequence[int]) -> dict:
    """dataset.json whose label manager has one sigmoid channel per task.

    nnU-Net treats channels as independent sigmoid maps only for region-based models, which
    it recognises by regions of more than one label value; writing each task as the region
    (label, label) makes it a one-label region. Its segmentation is not used (we resolve
    overlaps by the highest probability); its resampling and un-cropping are.
    """
    regions = {"background": 0, **{f"label_{label}": [int(label), int(label)] for label in labels}}
    return {**dataset_json, "labels": regions, "regions_class_order": [int(label) for label in labels]}


class InContextSegmenter:
    """Segments query images with the tasks given by reference image/mask pairs.

    model: a loaded MASS pretraining (`load_pretrained_model`); its network is moved to `device`.
    tile_step_size: sliding-window step as a fraction of the window (nnU-Net's -step_size).
    largest_component: keep only the largest connected component of each label.
    """

    def __init__(self, model: PretrainedModel, device: Optional[torch.device] = None, tile_step_size: float = 0.5,
                 largest_component: bool = False, verbose: bool = False):
        if not 0 < tile_step_size <= 1:
            raise ValueError(f"tile_step_size must be in (0, 1], got {tile_step_size}")
        self.model = model
        self.device = torch.device(device) if device is not None else next(model.network.parameters()).device
        self.network = model.network.to(self.device).eval()
        self.tile_step_size = tile_step_size
        self.largest_component = largest_component
        self.verbose = verbose
        self.window = tuple(int(s) for s in (model.metadata.get("crop_size") or
                                             model.configuration_manager.patch_size))
        self.reader_writer = model.plans_manager.image_reader_writer_class()
        self.preprocessor = model.configuration_manager.preprocessor_class(verbose=verbose)
        self._tokens: Dict[int, List[torch.Tensor]] = {}  # label -> tokens (1, 1, stages, T, d) per reference
        self.references: Dict[int, List[str]] = {}  # label -> mask files, for provenance
        self._predictors: Dict[tuple, object] = {}  # labels -> nnUNetPredictor, reused across cases

    @property
    def labels(self) -> List[int]:
        """The labels this segmenter can segment, sorted."""
        return sorted(self._tokens)

    def add_reference(self, image_files: Union[PathLike, Sequence[PathLike]], mask_file: PathLike,
                      labels: Optional[Sequence[int]] = None) -> List[int]:
        """Encode one reference: every label value in `mask_file` (or only `labels`) becomes a task,
        averaged with earlier references of the same label. Returns the labels added."""
        image_files, mask_file = as_file_list(image_files), str(mask_file)
        if not Path(mask_file).is_file():
            raise FileNotFoundError(f"reference mask not found: {mask_file}")
        data, properties = self._read_images(image_files)
        seg, mask_properties = self.reader_writer.read_seg(mask_file)
        _check_reference_geometry(data, properties, seg, mask_properties, image_files, mask_file)
        labels = _chosen_labels(seg, labels, mask_file)
        reference_json = {**self.model.dataset_json, "labels": {"background": 0}}  # no class locations needed
        data, seg, _ = self.preprocessor.run_case_npy(data, seg, properties, self.model.plans_manager,
                                                      self.model.configuration_manager, reference_json)
        tokens = {label: self._encode_label(data, seg[0] == label, label, mask_file) for label in labels}
        for label, label_tokens in tokens.items():  # only once every label encoded: a failure adds nothing
            self._tokens.setdefault(label, []).append(label_tokens)
            self.references.setdefault(label, []).append(mask_file)
        self._predictors.clear()  # their tokens are out of date
        return labels

    def segment(self, image_files: Union[PathLike, Sequence[PathLike]], labels: Optional[Sequence[int]] = None):
        """(label map, {label: probabilities}) of one query case in its original geometry
        (array axes as the plans' reader returns them); `labels` chooses a subset of the tasks."""
        label_map, probabilities, labels, _ = self._segment_case(as_file_list(image_files), labels)
        return label_map, dict(zip(labels, probabilities))

    def predict_to_file(self, image_files: Union[PathLike, Sequence[PathLike]], output_file_truncated: PathLike,
                        labels: Optional[Sequence[int]] = None, save_probabilities: bool = False,
                        file_ending: Optional[str] = None) -> str:
        """Segment one case and write `<output_file_truncated><file_ending>` in the query's geometry;
        with `save_probabilities` also `.npz` (probabilities (K, *S) and their `labels`) and `.pkl`
        (the reader's properties), as nnU-Net writes them. Returns the label map's path."""
        from batchgenerators.utilities.file_and_folder_operations import save_pickle

        label_map, probabilities, labels, properties = self._segment_case(as_file_list(image_files), labels)
        output = str(output_file_truncated) + (file_ending or self.model.dataset_json["file_ending"])
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        self.reader_writer.write_seg(label_map, output, properties)
        if save_probabilities:
            np.savez_compressed(str(output_file_truncated) + ".npz", probabilities=probabilities,
                                labels=np.asarray(labels))
            save_pickle(properties, str(output_file_truncated) + ".pkl")
        return output

    def predict_folder(self, inputs: Union[PathLike, Sequence[PathLike]], output_folder: PathLike,
                       labels: Optional[Sequence[int]] = None, save_probabilities: bool = False,
                       file_ending: Optional[str] = None) -> List[str]:
        """Segment every case of a folder (nnU-Net naming, CASE_0000<file_ending>) or of a list of
        files, writing `<output_folder>/<CASE><file_ending>`. Returns the written label maps."""
        from tqdm import tqdm

        file_ending = file_ending or self.model.dataset_json["file_ending"]
        cases = image_cases(inputs, file_ending, self.model.num_input_channels)
        return [self.predict_to_file(files, Path(output_folder) / case, labels, save_probabilities, file_ending)
                for case, files in tqdm(cases.items(), desc="in-context segmentation", disable=len(cases) < 2)]

    def _read_images(self, image_files: List[str]):
        missing = [f for f in image_files if not Path(f).is_file()]
        if missing:
            raise FileNotFoundError(f"image file(s) not found: {', '.join(missing)}")
        expected = self.model.num_input_channels
        if len(image_files) != expected:
            raise InContextInputError(
                f"{', '.join(image_files)}: {len(image_files)} image channel(s) given, the model expects {expected} "
                f"(channel_names {self.model.dataset_json.get('channel_names')}); give one file per channel")
        return self.reader_writer.read_images(image_files)

    @torch.no_grad()
    def _encode_label(self, data: np.ndarray, mask: np.ndarray, label: int, mask_file: str) -> torch.Tensor:
        """Task tokens (1, 1, stages, T, d) of one label, from a window centred on it."""
        from nnunet_mass.downstream.features import pad_to_patch

        if not mask.any():
            raise InContextInputError(f"{mask_file}: label {label} vanishes when resampled to the model's spacing "
                                      f"{self.model.configuration_manager.spacing} mm; give a larger structure")
        data, mask = pad_to_patch(data, self.window), pad_to_patch(mask, self.window)
        box = window_around(mask, self.window)
        image = torch.from_numpy(np.ascontiguousarray(data[(slice(None), *box)]))[None].float()  # (1, C, *W)
        masks = torch.from_numpy(np.ascontiguousarray(mask[box]))[None, None].float()  # (1, 1, *W)
        return self.network.encode_tasks(image.to(self.device), masks.to(self.device))

    def task_tokens(self, labels: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Tokens (1, K, stages, T, d) of `labels` (default: all), each averaged over its references."""
        averaged = [self.network.average_tasks(self._tokens[label]) for label in self._chosen_tasks(labels)]
        return torch.cat(averaged, dim=1)

    def _chosen_tasks(self, labels: Optional[Sequence[int]]) -> List[int]:
        if not self._tokens:
            raise InContextInputError("no reference given: call add_reference (-ref IMAGE MASK) first")
        if labels is None:
            return self.labels
        unknown = sorted(set(int(label) for label in labels) - set(self._tokens))
        if unknown:
            raise InContextInputError(f"labels {unknown} have no reference; the references give {self.labels}")
        return sorted(set(int(label) for label in labels))

    def _segment_case(self, image_files: List[str], labels: Optional[Sequence[int]]):
        """(label map, probabilities (K, *S), labels, reader properties) of one query case."""
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

        labels = self._chosen_tasks(labels)
        data, properties = self._read_images(image_files)
        data, _, properties = self.preprocessor.run_case_npy(data, None, properties, self.model.plans_manager,
                                                             self.model.configuration_manager, self.model.dataset_json)
        if tuple(labels) not in self._predictors:  # built once per label set (nnUNet_compile=t compiles it)
            self._predictors[tuple(labels)] = self._predictor(labels)
        predictor = self._predictors[tuple(labels)]
        logits = predictor.predict_sliding_window_return_logits(torch.from_numpy(data)).float().cpu()
        _, probabilities = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, predictor.plans_manager, predictor.configuration_manager, predictor.label_manager, properties,
            return_probabilities=True)
        label_map = combine_tasks(probabilities, labels)
        if self.largest_component:
            label_map = keep_largest_components(label_map, labels)
        return label_map, probabilities, labels, properties

    def _predictor(self, labels: Sequence[int]):
        """nnUNetPredictor around the task-conditioned network, with a window of the pretraining crop."""
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

        with contextlib.redirect_stdout(io.StringIO()):  # its constructor prints a CUDA-only notice on CPU
            predictor = nnUNetPredictor(tile_step_size=self.tile_step_size, use_gaussian=True, use_mirroring=False,
                                        perform_everything_on_device=self.device.type == "cuda", device=self.device,
                                        verbose=self.verbose, allow_tqdm=self.verbose)
        manager = self.model.configuration_manager
        window_manager = ConfigurationManager({**manager.configuration, "patch_size": list(self.window)})
        network = TaskConditionedNetwork(self.network, self.task_tokens(labels))
        predictor.manual_initialization(network, self.model.plans_manager, window_manager, None,
                                        task_dataset_json(self.model.dataset_json, labels),
                                        "InContextSegmenter", None)
        return predictor


def _check_reference_geometry(data, properties, seg, mask_properties, image_files, mask_file) -> None:
    if data.shape[1:] != seg.shape[1:]:
        raise InContextInputError(f"reference mask {mask_file} has size {seg.shape[1:]} but its image "
                                  f"{', '.join(image_files)} has {data.shape[1:]}: they must share one voxel grid")
    differences = geometry_differences(properties, mask_properties)
    if differences:
        raise InContextInputError(f"reference mask {mask_file} and image {', '.join(image_files)} differ in "
                                  f"{', '.join(differences)}: they must share one geometry (resample the mask)")


def _chosen_labels(seg: np.ndarray, labels: Optional[Sequence[int]], mask_file: str) -> List[int]:
    """The label values to encode: all non-zero values of the mask, or the chosen ones (all present)."""
    present = [int(v) for v in np.unique(seg) if v > 0]
    if not present:
        raise InContextInputError(f"reference mask {mask_file} is empty: it marks no voxel with a label > 0")
    if labels is None:
        return present
    absent = sorted(set(int(label) for label in labels) - set(present))
    if absent:
        raise InContextInputError(f"reference mask {mask_file} holds labels {present}, not {absent}")
    return sorted(set(int(label) for label in labels))


def untrained_copy(model: PretrainedModel, seed: int = 0) -> PretrainedModel:
    """The same model with a freshly initialised network (no pretraining): a floor for benchmarks."""
    from nnunet_mass.networks.incontext import build_incontext_network

    torch.manual_seed(seed)
    network = build_incontext_network(model.plans_manager, model.configuration_manager, model.num_input_channels)
    return replace(model, network=network.eval())
