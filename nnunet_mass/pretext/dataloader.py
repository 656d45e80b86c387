"""MASSPretextDataLoader: nnU-Net's data loader, drawing MASS pretext samples.

Per sample (DESIGN 1.2, 3.4): nnU-Net's index sampling picks the case (`get_indices`,
honouring `sampling_probabilities`); `windows` draws the anchor and the two windows;
`selection` draws the masks present in the reference window; the hull of both views'
regions (window + augmentation margin) is read once from nnU-Net's image and from the
layers of the drawn masks; each view is cut out of it and augmented (`augmentation`); the
drawn masks, the whole-FOV task and padding become K channels with validity flags.

It runs where nnUNetDataLoader runs: single-threaded, or copied into the worker processes
of batchgenerators' NonDetMultiThreadedAugmenter. So it is picklable (open mask files are
dropped and reopened per process) and its randomness is per process: one numpy Generator,
created on first use in each process from numpy's global generator, which batchgenerators
seeds per worker (as nnU-Net's own sampling relies on). With `seed`, it is created from
(seed, thread_id) instead and the case is drawn from it too, so a validation loader repeats
the same samples. The bgv2 transforms draw from numpy's and torch's global generators; they
are seeded from the loader's Generator for each sample and restored afterwards.
"""
import contextlib
import os
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from threadpoolctl import threadpool_limits

from nnunet_mass.masks.store import (GENERATE_COMMAND, MaskFormatError, StoredMaskStack, is_finished,
                                     open_mask_stack)
from nnunet_mass.pretext.augmentation import augment_view, build_view_transforms, pack_layer_masks, view_margin
from nnunet_mass.pretext.selection import assemble_tasks, draw_present_masks, plan_channels
from nnunet_mass.pretext.settings import PretextSettings
from nnunet_mass.pretext.windows import ViewPair, draw_view_pair, grow, hull, slices_within

MASK_CACHE_SIZE = 64  # cases whose opened masks a loader keeps


class MASSPretextDataLoader(nnUNetDataLoader):
    """Batches of {'reference', 'reference_masks', 'query', 'query_masks', 'valid', 'keys'}.

    data: an nnU-Net dataset (nnUNetDatasetBlosc2 of the configuration's data folder).
    patch_size: the network's patch, (z, y, x) or (y, x) for 2D configurations.
    masks_folder: the configuration's mask folder (`nnunet_mass.masks.store.mask_folder`).
    weak_transforms / strong_transforms: the reference's / query's ComposeTransforms; None
        builds them from `settings.weak` / `settings.strong`. Custom ones must map a region of
        window + `view_margin(patch_size, settings.weak/strong)` to the patch.
    """

    def __init__(self, data, batch_size: int, patch_size: Sequence[int], label_manager, masks_folder,
                 settings: PretextSettings | None = None, weak_transforms=None, strong_transforms=None,
                 sampling_probabilities=None, seed: int | None = None):
        # final patch = patch: windows are cut at the patch size, the margin is handled here
        super().__init__(data, batch_size, patch_size, patch_size, label_manager, oversample_foreground_percent=0.0,
                         sampling_probabilities=sampling_probabilities, transforms=None)
        self.settings = settings or PretextSettings()
        self.masks_folder = str(masks_folder)
        self.view_patch_size = tuple(int(p) for p in patch_size)  # what the transforms see: 2D stays 2D
        self.weak_transforms = weak_transforms or build_view_transforms(self.view_patch_size, self.settings.weak)
        self.strong_transforms = strong_transforms or build_view_transforms(self.view_patch_size,
                                                                            self.settings.strong)
        # margins on the 3D grid the windows live on (z margin 0 for 2D patches)
        self.margins = {name: self._as_3d(view_margin(self.view_patch_size, strength), 0)
                        for name, strength in (("reference", self.settings.weak), ("query", self.settings.strong))}
        self.seed = seed
        self._rng, self._rng_owner, self._stacks = None, None, OrderedDict()

    def __getstate__(self):
        # open files and the generator stay behind: each process opens and seeds its own
        return {**self.__dict__, "_rng": None, "_rng_owner": None, "_stacks": OrderedDict()}

    @property
    def rng(self) -> np.random.Generator:
        """This process's generator (see module docstring)."""
        owner = (os.getpid(), self.thread_id)
        if self._rng is None or self._rng_owner != owner:
            entropy = [self.seed, self.thread_id] if self.seed is not None else np.random.randint(0, 2**31, 4)
            self._rng, self._rng_owner = np.random.default_rng(np.random.SeedSequence(entropy)), owner
        return self._rng

    def get_indices(self):
        if self.seed is None:
            return super().get_indices()  # nnU-Net's own draw, from the per-worker global generator
        return self.rng.choice(self.indices, self.batch_size, replace=True, p=self.sampling_probabilities)

    def generate_train_batch(self) -> dict:
        keys = [str(k) for k in self.get_indices()]
        with torch.no_grad(), threadpool_limits(limits=1, user_api=None):
            samples = [self.make_sample(key) for key in keys]
        batch = {name: torch.stack([s[name] for s in samples])
                 for name in ("reference", "reference_masks", "query", "query_masks", "valid")}
        return {**batch, "keys": keys}

    def make_sample(self, key: str) -> dict:
        """One pretext sample of case `key`: tensors without the batch axis."""
        data, _, _, _ = self._data.load_case(key)  # data: blosc2 (C, z, y, x), memory-mapped
        stack = self.mask_stack(key, data.shape)
        views, drawn = self._draw_views_and_masks(data.shape[1:], stack)
        plan = plan_channels(len(drawn), self.settings.num_masks, self.settings.whole_fov_task, self.rng)
        regions = {name: grow(getattr(views, name), self.margins[name]) for name in ("reference", "query")}
        both = hull(regions["reference"], regions["query"])
        image = crop_and_pad_nd(data, both.tolist(), 0, cast_cropped_to=np.float32)  # (C, *both), 0 outside
        packed = self._packed_masks(stack, both, drawn)                                 # int32 (m, *both)
        out = {}
        with _global_generators_from(self.rng):
            for name, transforms in (("reference", self.weak_transforms), ("query", self.strong_transforms)):
                cut = (slice(None), *slices_within(regions[name], both))
                out[name], out[name + "_masks"] = augment_view(
                    transforms, self._as_view(image[cut]), self._as_view(packed[cut]), len(drawn))
        reference, query, valid = assemble_tasks(out["reference_masks"].numpy(), out["query_masks"].numpy(), plan,
                                                 self.settings.min_reference_voxels)
        return {"reference": out["reference"], "reference_masks": torch.from_numpy(reference),
                "query": out["query"], "query_masks": torch.from_numpy(query), "valid": torch.from_numpy(valid)}

    def mask_stack(self, key: str, data_shape) -> StoredMaskStack:
        """The case's masks, opened (and checked against the data's shape) once per process and
        kept for the most recently used cases: a pool of thousands would otherwise hold thousands
        of indices and memory maps per worker, and reopening costs only milliseconds."""
        if key in self._stacks:
            self._stacks.move_to_end(key)
        else:
            self._stacks[key] = open_mask_stack(self.masks_folder, key, data_shape=data_shape)
            if len(self._stacks) > MASK_CACHE_SIZE:
                self._stacks.popitem(last=False)
        return self._stacks[key]

    @staticmethod
    def _packed_masks(stack: StoredMaskStack, box: np.ndarray, drawn: list) -> np.ndarray:
        """The drawn masks over `box`, bit-packed, reading only their layers."""
        layers = sorted({info.layer for info in drawn})
        crop = stack.crop_bbox(box, layers)  # uint16 (len(layers), *box), 0 outside the volume
        local = [replace(info, layer=layers.index(info.layer)) for info in drawn]
        return pack_layer_masks(crop, local, box)

    def _draw_views_and_masks(self, shape, stack: StoredMaskStack) -> tuple[ViewPair, list]:
        """Windows and drawn masks; a window without any present mask is drawn again (a few times)."""
        settings = self.settings
        for _ in range(settings.anchor_attempts):
            views = draw_view_pair(shape, self.patch_size, settings.min_overlap, self.rng)
            drawn = draw_present_masks(stack, views.reference, settings.min_reference_voxels,
                                       settings.max_drawn_masks, self.rng,
                                       size_bias=settings.mask_size_bias)
            if drawn:
                break
        return views, drawn

    def _as_3d(self, values: np.ndarray, fill: int) -> np.ndarray:
        """Per-axis values of the transforms' patch on the (z, y, x) grid of the windows."""
        return np.concatenate([[fill], values]) if self.patch_size_was_2d else values

    def _as_view(self, array: np.ndarray) -> np.ndarray:
        """(channels, z, y, x) region as the transforms see it: the z axis (of size 1) dropped for 2D."""
        return array[:, 0] if self.patch_size_was_2d else array


@contextlib.contextmanager
def _global_generators_from(rng: np.random.Generator):
    """Seed numpy's and torch's global generators from `rng`; restore both on exit."""
    state = np.random.get_state()
    seed = int(rng.integers(0, 2**31))
    with torch.random.fork_rng(devices=[]):
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            np.random.set_state(state)


def require_masks(masks_folder, case_ids: Sequence[str], dataset_name: str, configuration: str,
                  plans_identifier: str, data_folder=None) -> None:
    """Fail early, naming the command that makes them, when cases have no masks (FileNotFoundError)
    or masks of another shape than nnU-Net's data in `data_folder` (MaskFormatError).

    Reads only file headers: which files exist and, with `data_folder`, both arrays' shapes.
    """
    folder = Path(masks_folder)
    command = f"{GENERATE_COMMAND} -d {dataset_name} -c {configuration} -p {plans_identifier}"
    missing = [case for case in case_ids if not is_finished(folder, case)]
    if missing:
        shown = ", ".join(missing[:10]) + (f", ... ({len(missing) - 10} more)" if len(missing) > 10 else "")
        raise FileNotFoundError(f"{len(missing)} of {len(case_ids)} case(s) have no masks in {folder}: {shown}. "
                                f"Make them with: {command}")
    if data_folder is None:
        return
    stale = [case for case in case_ids if _spatial_shape(folder / f"{case}.b2nd")
             != _spatial_shape(Path(data_folder) / f"{case}.b2nd")]
    if stale:
        raise MaskFormatError(f"{len(stale)} case(s) have masks of another shape than nnU-Net's preprocessed data "
                              f"(the data was preprocessed again after the masks were made): "
                              f"{', '.join(stale[:10])}. Regenerate them: {command} --overwrite")


def _spatial_shape(path: Path) -> tuple:
    """(z, y, x) of a (channels, z, y, x) blosc2 file, from its header."""
    import blosc2

    return tuple(blosc2.open(urlpath=str(path), mode="r").shape[1:])
