"""Mask stacks on disk, beside nnU-Net's preprocessed data.

Layout, for one configuration of a preprocessed dataset:

    <nnUNet_preprocessed>/<dataset>/<data_identifier>/              nnU-Net's cases (not ours)
    <nnUNet_preprocessed>/<dataset>/<data_identifier>_mass_masks/   this module's files
        <case>.b2nd   blosc2 NDArray, uint16 (L, z, y, x): the MaskStack's label layers
        <case>.json   the mask index (MaskStack.index_dict()), format version, metadata

Each mask's entry in the index holds its bounding box (`bbox`, computed once when saved), so
a loader can tell which masks can reach a window from the index alone and read only the
layers it needs. Index files without boxes (written before they were stored) stay valid:
`MaskInfo.bbox` is then None and a loader counts voxels in the layers instead.

The folder is a sibling of nnU-Net's on purpose: nnU-Net takes every `*.b2nd` in its data
folder for a case. A case is finished once its JSON exists. Both files are written under
temporary names in the same folder and renamed into place, the JSON last (and an old JSON
is removed before its b2nd is replaced), so an interrupted run never leaves a finished
case whose files disagree.

Layers are chunked along (z, y, x) like nnU-Net chunks its data, so reading a training
crop through the memory-mapped file decompresses only the chunks that crop touches.
"""
import glob
import json
import os
import uuid
from dataclasses import asdict, is_dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from nnunet_mass.masks.stack import MaskInfo, MaskStack

FORMAT = "nnunet_mass.mask_stack"
FORMAT_VERSION = 1
FOLDER_SUFFIX = "_mass_masks"
GENERATE_COMMAND = "nnUNetv2_mass_generate_masks"
DEFAULT_PATCH_SIZE = (128, 128, 128)  # (z, y, x) access pattern assumed when the caller names none
_PARTIAL = ".partial"


class MaskFormatError(ValueError):
    """Stored masks that this code cannot use as they are (version, shape, damaged files)."""


def mask_folder(preprocessed_dataset_folder, data_identifier: str) -> Path:
    """Where the masks of one configuration live: a sibling of nnU-Net's data folder."""
    return Path(preprocessed_dataset_folder) / f"{data_identifier}{FOLDER_SUFFIX}"


def is_finished(folder, case: str) -> bool:
    folder = Path(folder)
    return (folder / f"{case}.json").is_file() and (folder / f"{case}.b2nd").is_file()


def finished_cases(folder) -> list[str]:
    """Sorted ids of the finished cases in `folder` (empty if it does not exist)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.name[:-5] for p in folder.glob("*.json")
                  if not p.name.startswith(".") and is_finished(folder, p.name[:-5]))


def chunking(shape: Sequence[int], patch_size: Sequence[int] | None = None) -> tuple[tuple, tuple]:
    """(blocks, chunks) for uint16 layers of `shape` (L, z, y, x): one layer per chunk,
    spatial extent sized to `patch_size` (z, y, x) as nnU-Net sizes its own chunks."""
    patch_size = tuple(int(p) for p in (patch_size if patch_size is not None else DEFAULT_PATCH_SIZE))
    if len(patch_size) == 2:  # 2d configurations read (1, y, x) slabs
        patch_size = (1, *patch_size)
    try:
        from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params
        blocks, chunks = comp_blosc2_params(tuple(shape), patch_size, bytes_per_pixel=2)
    except ImportError:  # nnU-Net versions without the helper: chunk = patch, block = half of it
        chunks = (1, *(max(1, min(p, s)) for p, s in zip(patch_size, shape[1:])))
        blocks = (1, *(max(1, c // 2) for c in chunks[1:]))
    return tuple(blocks), tuple(chunks)


def save_mask_stack(folder, case: str, stack: MaskStack, metadata: dict | None = None,
                    patch_size: Sequence[int] | None = None) -> Path:
    """Write `stack` as `<case>.b2nd` + `<case>.json` in `folder` (created); returns the JSON path.

    `metadata` (JSON-serialisable; dataclasses and numpy values are converted) should name
    the generator and its settings and hold `data_shape`, the shape of nnU-Net's data
    array of the case (C, z, y, x), which `open_mask_stack` checks against.
    """
    import blosc2

    _check_case_name(case)
    if len(stack.masks) == 0 or stack.layers.shape[0] == 0:
        raise ValueError(f"case {case}: the mask stack is empty; there is nothing to save")
    _check_index(case, stack)
    stack = stack.with_bboxes()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _remove_partials(folder, case)

    token = uuid.uuid4().hex[:12]
    partial_array = folder / f".{case}.{token}.b2nd{_PARTIAL}"
    partial_index = folder / f".{case}.{token}.json{_PARTIAL}"
    index = {"format": FORMAT, "format_version": FORMAT_VERSION, "case": case, **stack.index_dict(),
             "metadata": _jsonable(metadata or {})}
    try:
        blocks, chunks = chunking(stack.layers.shape, patch_size)
        cparams = {"codec": blosc2.Codec.LZ4HC, "clevel": 5, "filters": [blosc2.Filter.SHUFFLE], "nthreads": 1}
        blosc2.asarray(np.ascontiguousarray(stack.layers), urlpath=str(partial_array), chunks=chunks,
                       blocks=blocks, cparams=cparams)
        _fsync(partial_array)
        partial_index.write_text(json.dumps(index, indent=1))
        _fsync(partial_index)
        final_index = folder / f"{case}.json"
        final_index.unlink(missing_ok=True)  # unfinished from here until the new index lands
        os.replace(partial_array, folder / f"{case}.b2nd")
        os.replace(partial_index, final_index)
    finally:
        partial_array.unlink(missing_ok=True)
        partial_index.unlink(missing_ok=True)
    return folder / f"{case}.json"


class StoredMaskStack:
    """The masks of one case, opened memory-mapped; layers are read window by window.

    Picklable (the open file is dropped and reopened on first use), so it can be handed
    to nnU-Net's data-augmentation worker processes.
    """

    def __init__(self, folder, case: str, index: dict):
        self.folder = Path(folder)
        self.case = case
        self.masks: list[MaskInfo] = [MaskInfo.from_dict(m) for m in index["masks"]]
        self.shape: tuple[int, ...] = tuple(index["shape"])  # (L, z, y, x)
        self.metadata: dict = index.get("metadata", {})
        self._array = None

    def __len__(self) -> int:
        return len(self.masks)

    def __getstate__(self):
        return {**self.__dict__, "_array": None}

    @property
    def has_bboxes(self) -> bool:
        """True when every mask's bounding box is in the index (files written by this version)."""
        return all(m.bbox is not None for m in self.masks)

    @property
    def path(self) -> Path:
        return self.folder / f"{self.case}.b2nd"

    @property
    def array(self):
        """The blosc2 NDArray (L, z, y, x), opened read-only and memory-mapped."""
        if self._array is None:
            self._array = _open_array(self.path)
        return self._array

    def crop(self, slices, layers: Sequence[int] | None = None) -> np.ndarray:
        """uint16 (L, ...) of the spatial window `slices` (up to three slices, numpy semantics);
        with `layers`, only those layers, in that order ((len(layers), ...))."""
        slices = tuple(slices) if isinstance(slices, (tuple, list)) else (slices,)
        if len(slices) > len(self.shape) - 1 or not all(isinstance(s, slice) for s in slices):
            raise ValueError(f"crop takes up to {len(self.shape) - 1} spatial slices, got {slices}")
        if any(s.step not in (None, 1) for s in slices):
            raise ValueError(f"crop takes contiguous windows (step 1), got {slices}")
        window = tuple(slice(*s.indices(n)[:2]) for s, n in zip(slices, self.shape[1:]))
        num_layers = self.shape[0] if layers is None else len(layers)
        if any(w.stop <= w.start for w in window) or num_layers == 0:  # nothing to decompress
            sizes = [max(0, w.stop - w.start) for w in window] + list(self.shape[1 + len(window):])
            return np.zeros((num_layers, *sizes), dtype=np.uint16)
        if layers is None:
            return np.asarray(self.array[(slice(None), *window)], dtype=np.uint16)
        # one read per layer: a layer is its own chunk, so the others are never decompressed
        return np.stack([np.asarray(self.array[(slice(layer, layer + 1), *window)], dtype=np.uint16)[0]
                         for layer in self._checked_layers(layers)])

    def crop_bbox(self, bbox: Sequence[Sequence[int]], layers: Sequence[int] | None = None) -> np.ndarray:
        """uint16 (L, hi - lo, ...) for bbox [[lo, hi], ...] (z, y, x) in voxels; parts outside
        the array are 0 (no mask), as nnU-Net's loader pads its crops. `layers` as in `crop`."""
        spatial = self.shape[1:]
        if len(bbox) != len(spatial):
            raise ValueError(f"bbox needs {len(spatial)} [lo, hi] pairs, got {bbox}")
        num_layers = self.shape[0] if layers is None else len(layers)
        out = np.zeros((num_layers, *(int(hi) - int(lo) for lo, hi in bbox)), dtype=np.uint16)
        inside = [(max(int(lo), 0), min(int(hi), n)) for (lo, hi), n in zip(bbox, spatial)]
        if all(hi > lo for lo, hi in inside) and num_layers > 0:
            target = tuple(slice(lo - int(b[0]), hi - int(b[0])) for (lo, hi), b in zip(inside, bbox))
            out[(slice(None), *target)] = self.crop(tuple(slice(lo, hi) for lo, hi in inside), layers)
        return out

    def read_masks(self, bbox: Sequence[Sequence[int]], infos: Sequence[MaskInfo]) -> np.ndarray:
        """bool (K, hi - lo, ...): the masks `infos` over bbox (zero-padded outside the array),
        decompressing only the layers they live in."""
        layers = sorted({info.layer for info in infos})
        position = {layer: index for index, layer in enumerate(layers)}
        crop = self.crop_bbox(bbox, layers)  # (len(layers), ...)
        return expand(crop, [replace(info, layer=position[info.layer]) for info in infos])

    def _checked_layers(self, layers: Sequence[int]) -> list[int]:
        layers = [int(layer) for layer in layers]
        if any(not 0 <= layer < self.shape[0] for layer in layers):
            raise IndexError(f"layers {layers} out of range for {self.shape[0]} layer(s) of case {self.case}")
        return layers

    @staticmethod
    def expand(crop_layers: np.ndarray, infos: Sequence[MaskInfo]) -> np.ndarray:
        """bool (K, ...) of the chosen masks from a crop of the layers (see module-level `expand`)."""
        return expand(crop_layers, infos)

    def load(self) -> MaskStack:
        """The whole stack in memory."""
        return MaskStack(self.crop(()), list(self.masks))


def expand(crop_layers: np.ndarray, infos: Sequence[MaskInfo]) -> np.ndarray:
    """bool (K, ...): mask k is `crop_layers[infos[k].layer] == infos[k].label`."""
    crop_layers = np.asarray(crop_layers)
    out = np.empty((len(infos), *crop_layers.shape[1:]), dtype=bool)
    for k, info in enumerate(infos):
        if not 0 <= info.layer < crop_layers.shape[0]:
            raise IndexError(f"mask {info} refers to layer {info.layer}, but the crop has {crop_layers.shape[0]}")
        np.equal(crop_layers[info.layer], info.label, out=out[k])
    return out


def open_mask_stack(folder, case: str, data_shape: Sequence[int] | None = None) -> StoredMaskStack:
    """The finished masks of `case`; `data_shape` (nnU-Net's (C, z, y, x) or (z, y, x)) is checked.

    Raises FileNotFoundError (naming the command that makes masks) for a missing case and
    MaskFormatError for another format version, damaged files or a shape mismatch.
    """
    folder = Path(folder)
    if not is_finished(folder, case):
        raise FileNotFoundError(f"No finished masks for case {case} in {folder}. Make them with: "
                                f"{_generate_hint(folder)}")
    index = _read_index(folder, case)
    stored = StoredMaskStack(folder, case, index)
    on_disk = tuple(stored.array.shape)
    if on_disk != stored.shape or stored.array.dtype != np.uint16:
        raise MaskFormatError(f"{stored.path} holds {stored.array.dtype} {on_disk} but its index says uint16 "
                              f"{stored.shape}: the files are damaged. Regenerate them: "
                              f"{_generate_hint(folder)} --overwrite")
    if data_shape is not None:
        expected = tuple(int(n) for n in data_shape)[-(len(stored.shape) - 1):]
        if expected != stored.shape[1:]:
            raise MaskFormatError(f"Masks of case {case} have shape {list(stored.shape[1:])} but nnU-Net's "
                                  f"preprocessed data has {list(expected)}: the data was preprocessed again after "
                                  f"the masks were made. Regenerate them: {_generate_hint(folder)} --overwrite")
    return stored


def _read_index(folder: Path, case: str) -> dict:
    path = folder / f"{case}.json"
    try:
        index = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise MaskFormatError(f"{path} cannot be read ({error}). Regenerate: "
                              f"{_generate_hint(folder)} --overwrite") from error
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise MaskFormatError(f"{path} is not a nnunet-mass mask index")
    if index.get("format_version") != FORMAT_VERSION:
        raise MaskFormatError(f"{path} has mask format version {index.get('format_version')}, this nnunet-mass "
                              f"reads version {FORMAT_VERSION}. Regenerate: {_generate_hint(folder)} --overwrite")
    return index


def _open_array(path: Path):
    import blosc2

    mmap = {} if os.name == "nt" else {"mmap_mode": "r"}  # as nnU-Net: no mmap on Windows
    return blosc2.open(urlpath=str(path), mode="r", dparams={"nthreads": 1}, **mmap)


def _generate_hint(folder: Path) -> str:
    """The command line that (re)makes the masks of `folder`, as far as its path tells."""
    dataset = folder.parent.name or "<dataset>"
    data_identifier = folder.name[:-len(FOLDER_SUFFIX)] if folder.name.endswith(FOLDER_SUFFIX) else folder.name
    return (f"{GENERATE_COMMAND} -d {dataset} with the -p/-c whose data identifier is '{data_identifier}' "
            f"(e.g. -p nnUNetPlans -c 3d_fullres for nnUNetPlans_3d_fullres)")


def _check_case_name(case: str) -> None:
    if not isinstance(case, str) or not case or case.startswith(".") or "/" in case or os.sep in case:
        raise ValueError(f"invalid case id {case!r}")


def _check_index(case: str, stack: MaskStack) -> None:
    num_layers = stack.layers.shape[0]
    for info in stack.masks:
        if not (0 <= info.layer < num_layers and 1 <= info.label <= np.iinfo(np.uint16).max):
            raise ValueError(f"case {case}: mask {info} does not fit layers of shape {stack.layers.shape}")


def _remove_partials(folder: Path, case: str) -> None:
    """Leftovers of an interrupted save of this case (never a finished file)."""
    for leftover in folder.glob(f".{glob.escape(case)}.*{_PARTIAL}"):
        leftover.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _jsonable(value):
    """Plain JSON types from dataclasses, numpy values, paths and tuples."""
    if is_dataclass(value) and not isinstance(value, type):
        return _jsonable(asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)
