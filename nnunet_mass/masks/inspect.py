"""QA of stored mask proposals: per-case statistics, a dataset summary and PNG overlays.

Per case (on nnU-Net's preprocessed grid, with the configuration's spacing):
- number of masks and label layers, masks per source;
- mask sizes in voxels and millilitres (5/25/50/75/95th percentiles);
- coverage: the fraction of body voxels inside at least one mask, and the fraction of
  covered voxels that lie outside the body.

The body is the classical generator's own `supervoxels.body_mask` of the preprocessed
image (with the generator's recorded `body_smoothing_mm`, else its default), i.e. the
region proposals are meant to tile: where nnU-Net cropped to a nonzero mask and
normalised inside it, that is exactly nnU-Net's nonzero region (seg = -1 outside); for CT
and other images without exact zeros it is the thresholded, hole-filled foreground.

Overlays show slices through the body along the image's axial axis (from the geometry
nnU-Net keeps in the case's properties; the first preprocessed axis without it), in
radiological display (anterior up, patient's right on the left) where the geometry says
how. Top row: the image; below it every mask, then only the large ones (organ scale,
otherwise hidden under the fine ones): one colour per mask, the smallest mask covering a
pixel on top, mask borders opaque.
"""
import json
from collections import Counter
from pathlib import Path

import numpy as np

from nnunet_mass.masks.stack import MaskStack
from nnunet_mass.masks.store import GENERATE_COMMAND, finished_cases, mask_folder, open_mask_stack

PERCENTILES = (5, 25, 50, 75, 95)
HEADER_PX = 22  # strip above the panels for the case name


class MaskQAError(RuntimeError):
    """The QA cannot run (no masks, unknown cases); the message names the fix."""


# ---------------------------------------------------------------- dataset and cases

def resolve_mask_cases(dataset_name_or_id, configuration: str, plans_identifier: str, cases=None) -> dict:
    """nnU-Net's layout (dataset_masks.resolve_layout) plus `mask_folder`, the chosen `cases`
    (those with finished masks unless named) and `notes` (cases left out, and why)."""
    from nnunet_mass.masks.dataset_masks import resolve_layout

    layout = dict(resolve_layout(dataset_name_or_id, configuration, plans_identifier))
    folder = mask_folder(layout["dataset_folder"], layout["data_identifier"])
    fix = f"{GENERATE_COMMAND} -d {dataset_name_or_id} -c {configuration} -p {plans_identifier}"
    finished = set(finished_cases(folder))
    notes = []
    if cases:
        unknown = [c for c in cases if c not in layout["cases"]]
        if unknown:
            raise MaskQAError(f"case(s) {', '.join(unknown)} are not preprocessed cases of {layout['dataset_name']} "
                              f"({configuration}); known: {', '.join(layout['cases'][:10])}"
                              + (" ..." if len(layout["cases"]) > 10 else ""))
        missing = [c for c in cases if c not in finished]
        if missing:
            raise MaskQAError(f"no finished masks for case(s) {', '.join(missing)} in {folder}. Make them with: {fix}")
        chosen = list(cases)
    else:
        if not finished:
            raise MaskQAError(f"no mask proposals in {folder} for {layout['dataset_name']} ({configuration}, "
                              f"{plans_identifier}). Make them with: {fix}")
        chosen = [c for c in layout["cases"] if c in finished]
        missing = [c for c in layout["cases"] if c not in finished]
        if missing:
            notes.append(f"{len(missing)} case(s) without finished masks are left out ({', '.join(missing[:5])}"
                         f"{' ...' if len(missing) > 5 else ''}); finish them with: {fix}")
    return {**layout, "mask_folder": folder, "cases": chosen, "notes": notes}


def plans_manager(plans_file):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    return PlansManager(str(plans_file))


def load_case(layout: dict, case: str, configuration: str, manager=None) -> dict:
    """{"image" float32 (C, z, y, x), "properties", "spacing" (z, y, x) mm, "stack"
    StoredMaskStack}; errors name the case."""
    from nnunet_mass.masks.dataset_masks import case_spacing, load_preprocessed_case

    manager = manager or plans_manager(layout["plans_file"])
    data, properties = load_preprocessed_case(layout["data_folder"], case)
    stack = open_mask_stack(layout["mask_folder"], case, data_shape=data.shape)
    spacing = case_spacing(properties, manager, manager.get_configuration(configuration))
    image = np.ascontiguousarray(data[:], dtype=np.float32)
    return {"image": image, "properties": properties, "spacing": spacing, "stack": stack,
            "transpose_forward": list(manager.transpose_forward)}


def case_body(image: np.ndarray, spacing, metadata: dict | None = None) -> np.ndarray:
    """Bool (z, y, x) body, computed as the classical generator computes it (module docstring)."""
    from nnunet_mass.masks.classical import ProposalSettings
    from nnunet_mass.masks.supervoxels import body_mask

    settings = ((metadata or {}).get("generator") or {}).get("settings") or {}
    smoothing = settings.get("body_smoothing_mm", ProposalSettings().body_smoothing_mm)
    return body_mask(image, spacing, float(smoothing))


# ---------------------------------------------------------------- layers of either stack kind

def num_layers(stack) -> int:
    return stack.layers.shape[0] if isinstance(stack, MaskStack) else stack.shape[0]


def read_layer(stack, index: int) -> np.ndarray:
    """uint16 (z, y, x) layer `index` of a MaskStack or StoredMaskStack (only that layer is read)."""
    if isinstance(stack, MaskStack):
        return stack.layers[index]
    return np.asarray(stack.array[index], dtype=np.uint16)


def read_slice(stack, axis: int, position: int) -> np.ndarray:
    """uint16 (L, a, b): every layer at `position` along spatial `axis` (0..2)."""
    window = [slice(None)] * 3
    window[axis] = slice(position, position + 1)
    layers = stack.layers[(slice(None), *window)] if isinstance(stack, MaskStack) else stack.crop(tuple(window))
    return np.take(layers, 0, axis=axis + 1)


def listed_lookup(masks, layer: int, max_value: int, fill, values) -> np.ndarray:
    """Array indexed by a layer's values: `values[k]` for every listed mask k of `layer`, else `fill`."""
    lookup = np.full(max_value + 1, fill, dtype=np.asarray(values).dtype)
    for k, info in enumerate(masks):
        if info.layer == layer and info.label <= max_value:
            lookup[info.label] = values[k]
    return lookup


# ---------------------------------------------------------------- statistics

def size_percentiles(voxels, voxel_ml: float) -> dict:
    """{"voxels": {"p5": ..}, "ml": {..}} of the mask sizes (empty dicts without masks)."""
    voxels = np.asarray(voxels, dtype=float)
    if voxels.size == 0:
        return {"voxels": {}, "ml": {}}
    values = np.percentile(voxels, PERCENTILES)
    return {"voxels": {f"p{p}": float(v) for p, v in zip(PERCENTILES, values)},
            "ml": {f"p{p}": float(v * voxel_ml) for p, v in zip(PERCENTILES, values)}}


def masks_per_source(masks) -> dict:
    return dict(sorted(Counter(m.source for m in masks).items()))


def covered_voxels(stack) -> np.ndarray:
    """Bool (z, y, x): inside at least one listed mask (read one layer at a time)."""
    shape = stack.layers.shape[1:] if isinstance(stack, MaskStack) else stack.shape[1:]
    covered = np.zeros(shape, dtype=bool)
    flags = np.ones(len(stack.masks), dtype=bool)
    for index in sorted({m.layer for m in stack.masks}):
        layer = read_layer(stack, index)
        covered |= listed_lookup(stack.masks, index, int(layer.max()), False, flags)[layer]
    return covered


def coverage(covered: np.ndarray, body: np.ndarray) -> dict:
    body_voxels = int(body.sum())
    inside = int(np.count_nonzero(covered & body))
    total = int(np.count_nonzero(covered))
    return {"body_voxels": body_voxels, "body_covered": inside / body_voxels if body_voxels else float("nan"),
            "outside_body": (total - inside) / total if total else float("nan")}


def case_statistics(stack, body: np.ndarray, spacing) -> dict:
    """Statistics of one case's masks (MaskStack or StoredMaskStack) on a body of the same grid."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    sizes = size_percentiles([m.voxels for m in stack.masks], voxel_ml)
    return {"num_masks": len(stack.masks), "num_layers": num_layers(stack), "spacing_zyx": [float(s) for s in spacing],
            "voxel_ml": voxel_ml, "size_voxels": sizes["voxels"], "size_ml": sizes["ml"],
            "sources": masks_per_source(stack.masks), **coverage(covered_voxels(stack), body),
            "body_ml": float(body.sum()) * voxel_ml}


def summarize_cases(stats: dict) -> dict:
    """Mean and median over cases of the main figures, and mask counts per source."""
    def spread(values):
        values = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
        if values.size == 0:
            return {"mean": float("nan"), "median": float("nan"), "min": float("nan"), "max": float("nan")}
        return {"mean": float(values.mean()), "median": float(np.median(values)),
                "min": float(values.min()), "max": float(values.max())}

    cases = list(stats.values())
    sources = sorted({s for c in cases for s in c["sources"]})
    return {"num_cases": len(cases), "total_masks": int(sum(c["num_masks"] for c in cases)),
            "num_masks": spread(c["num_masks"] for c in cases),
            "median_size_ml": spread(c["size_ml"].get("p50") for c in cases),
            "body_covered": spread(c["body_covered"] for c in cases),
            "outside_body": spread(c["outside_body"] for c in cases),
            "body_ml": spread(c["body_ml"] for c in cases),
            "masks_per_source": {s: spread(c["sources"].get(s, 0) for c in cases) for s in sources}}


def format_table(stats: dict, summary: dict) -> str:
    """Per-case table, masks per source and the dataset summary as text."""
    pct = " ".join(f"{'p' + str(p):>7}" for p in PERCENTILES)
    lines = [f"{'case':<20} {'masks':>6} {'layers':>6} {'body ml':>9} {'covered':>8} {'outside':>8} "
             f"| size ml {pct} | size voxels {pct}"]
    for case, s in stats.items():
        ml = " ".join(f"{s['size_ml'].get(f'p{p}', float('nan')):7.3g}" for p in PERCENTILES)
        vox = " ".join(f"{s['size_voxels'].get(f'p{p}', float('nan')):7.0f}" for p in PERCENTILES)
        lines.append(f"{case:<20} {s['num_masks']:>6} {s['num_layers']:>6} {s['body_ml']:>9.1f} "
                     f"{_percent(s['body_covered']):>8} {_percent(s['outside_body']):>8} | {'':7} {ml} | {'':11} {vox}")
    lines += ["", f"{'source':<28} {'masks/case mean':>16} {'min':>6} {'max':>6}"]
    for source, spread in summary["masks_per_source"].items():
        lines.append(f"{source:<28} {spread['mean']:>16.1f} {spread['min']:>6.0f} {spread['max']:>6.0f}")
    lines += ["", f"dataset: {summary['num_cases']} case(s), {summary['total_masks']} masks"]
    for key, label, fmt in (("num_masks", "masks per case", "{:.1f}"), ("median_size_ml", "median mask ml", "{:.3g}"),
                            ("body_covered", "body covered", None), ("outside_body", "mask voxels outside body", None)):
        spread = summary[key]
        show = (lambda v: fmt.format(v)) if fmt else _percent
        lines.append(f"  {label:<26} mean {show(spread['mean']):>8}   median {show(spread['median']):>8}")
    return "\n".join(lines)


def _percent(value) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{100 * value:.1f}%"


# ---------------------------------------------------------------- overlays

def view_geometry(properties: dict, transpose_forward) -> tuple:
    """(slice axis, transpose, flip rows, flip columns) of the preprocessed (z, y, x) grid for
    axial slices shown anterior up and patient's right on the left. nnU-Net's properties
    keep the SimpleITK direction of the raw image (x, y, z columns, LPS); the preprocessed
    axis i is raw array axis transpose_forward[i], i.e. SimpleITK index axis 2 - that.
    Without that geometry: slices along axis 0, shown as stored."""
    direction = (properties.get("sitk_stuff") or {}).get("direction")
    if direction is None or len(direction) != 9:
        return 0, False, False, False
    matrix = np.asarray(direction, dtype=float).reshape(3, 3)
    physical = [matrix[:, 2 - int(transpose_forward[axis])] for axis in range(3)]  # LPS vector of each axis
    axis = int(np.argmax([abs(v[2]) for v in physical]))  # closest to head-foot
    rows, cols = [a for a in range(3) if a != axis]
    transpose = abs(physical[rows][0]) > abs(physical[rows][1])  # rows run left-right: swap
    if transpose:
        rows, cols = cols, rows
    return axis, transpose, bool(physical[rows][1] < 0), bool(physical[cols][0] < 0)


def orient(plane: np.ndarray, view: tuple) -> np.ndarray:
    """A (a, b) plane cut along view[0], as displayed (see `view_geometry`)."""
    _, transpose, flip_rows, flip_cols = view
    plane = plane.T if transpose else plane
    return plane[::-1 if flip_rows else 1, ::-1 if flip_cols else 1]


def slice_positions(body: np.ndarray, axis: int, num_slices: int) -> list:
    """`num_slices` positions evenly spaced through the body's extent along `axis` (whole axis if no body)."""
    other = tuple(a for a in range(body.ndim) if a != axis)
    present = np.flatnonzero(body.any(axis=other)) if body.any() else np.arange(body.shape[axis])
    lo, hi = int(present[0]), int(present[-1]) + 1
    positions = lo + (np.arange(num_slices) + 0.5) * (hi - lo) / num_slices
    return sorted({min(int(p), hi - 1) for p in positions})


def mask_colours(count: int) -> np.ndarray:
    """float (count, 3) RGB, hues spread by the golden ratio so neighbouring indices differ."""
    from matplotlib.colors import hsv_to_rgb

    hue = (np.arange(count) * 0.618033988749895) % 1.0
    saturation = 0.55 + 0.4 * ((np.arange(count) * 7) % 3) / 2
    return hsv_to_rgb(np.stack([hue, saturation, np.full(count, 0.95)], axis=-1).reshape(-1, 3))


def smallest_on_top(layers: np.ndarray, masks) -> np.ndarray:
    """int (a, b) index into `masks` of the smallest mask covering each pixel, -1 where none.
    `layers` is (L, a, b), all layers of the stack at one slice."""
    best = np.full(layers.shape[1:], -1, dtype=np.int64)
    best_size = np.full(layers.shape[1:], np.iinfo(np.int64).max, dtype=np.int64)
    sizes = np.asarray([m.voxels for m in masks], dtype=np.int64)
    indices = np.arange(len(masks), dtype=np.int64)
    for layer in sorted({m.layer for m in masks}):
        plane = layers[layer]
        top = int(plane.max())
        size = listed_lookup(masks, layer, top, np.iinfo(np.int64).max, sizes)[plane]
        index = listed_lookup(masks, layer, top, -1, indices)[plane]
        smaller = size < best_size
        best = np.where(smaller, index, best)
        best_size = np.where(smaller, size, best_size)
    return best


def overlay_rgb(grey: np.ndarray, index: np.ndarray, colours: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """float (a, b, 3): `grey` in [0, 1] with mask `index` (-1 none) blended in, borders opaque."""
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    inside = index >= 0
    colour = colours[np.maximum(index, 0)]
    border = np.zeros_like(inside)
    border[:-1] |= index[:-1] != index[1:]
    border[1:] |= index[:-1] != index[1:]
    border[:, :-1] |= index[:, :-1] != index[:, 1:]
    border[:, 1:] |= index[:, :-1] != index[:, 1:]
    weight = np.where(inside & border, 1.0, np.where(inside, alpha, 0.0))[..., None]
    return (1 - weight) * rgb + weight * colour


def panel_size(plane_shape, plane_spacing, panel_px: int) -> tuple:
    """(height, width) pixels of one displayed plane: `panel_px` high, width from its mm extent."""
    height_mm, width_mm = plane_shape[0] * plane_spacing[0], plane_shape[1] * plane_spacing[1]
    return panel_px, max(1, int(round(panel_px * width_mm / height_mm)))


def display_window(values: np.ndarray) -> tuple:
    """(low, high) grey window: from the 0.5th percentile to the 99.5th, but at most 4
    interquartile ranges above the median, so that a few bright voxels (bone, contrast)
    do not squeeze soft tissue into the dark end (a soft-tissue window for CT)."""
    low, q25, median, q75, high = np.percentile(values, (0.5, 25, 50, 75, 99.5))
    high = min(high, median + 4 * (q75 - q25)) if q75 > q25 else high
    return float(low), float(max(high, low + 1e-6))


def overlay_rows(stack, coarse_percentile: float) -> list:
    """[(caption, indices into stack.masks)] of the overlay rows: every mask, then the masks of
    at least the `coarse_percentile` size percentile (organ-scale masks the fine ones hide)."""
    sizes = np.asarray([m.voxels for m in stack.masks])
    if sizes.size == 0:
        return [("no masks", sizes.astype(np.int64))]
    threshold = float(np.percentile(sizes, coarse_percentile))
    return [("all masks", np.arange(sizes.size)), (f">= p{coarse_percentile:g} size", np.flatnonzero(sizes >= threshold))]


def render_overlays(image: np.ndarray, stack, body: np.ndarray, spacing, path, view=(0, False, False, False),
                    num_slices: int = 5, panel_px: int = 192, title: str = "", coarse_percentile: float = 90) -> tuple:
    """Write the overlay PNG of one case to `path`; returns its (height, width) in pixels.

    `image` float (C, z, y, x) (channel 0 is shown), `stack` a MaskStack or StoredMaskStack
    on the same grid, `body` bool (z, y, x), `spacing` (z, y, x) mm, `view` from
    `view_geometry`. Rows: the image, then each of `overlay_rows`; one column per slice.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    axis = view[0]
    channel = image[0]
    low, high = display_window(channel[body] if body.any() else channel)
    grey = np.clip((channel - low) / max(high - low, 1e-6), 0, 1)
    colours = mask_colours(len(stack.masks))
    rows = overlay_rows(stack, coarse_percentile)
    positions = slice_positions(body, axis, num_slices)
    in_plane = [s for a, s in enumerate(spacing) if a != axis]
    plane_spacing = in_plane[::-1] if view[1] else in_plane
    height, width = panel_size(orient(np.take(grey, 0, axis=axis), view).shape, plane_spacing, panel_px)
    size = ((1 + len(rows)) * height + HEADER_PX, width * len(positions))

    figure = Figure(figsize=(size[1] / 100, size[0] / 100), dpi=100, facecolor="black")
    FigureCanvasAgg(figure)
    for column, position in enumerate(positions):
        plane = orient(np.take(grey, position, axis=axis), view)
        layers = read_slice(stack, axis, position)
        pictures = [(f"{'zyx'[axis]}={position}", np.repeat(plane[..., None], 3, axis=-1))]
        for caption, chosen in rows:
            local = orient(smallest_on_top(layers, [stack.masks[k] for k in chosen]), view)
            index = np.append(chosen, -1)[local]  # index into stack.masks; local -1 picks the appended -1
            pictures.append((caption, overlay_rgb(plane, index, colours)))
        for row, (caption, picture) in enumerate(pictures):
            bottom = (len(pictures) - 1 - row) * height
            axes = figure.add_axes((column * width / size[1], bottom / size[0], width / size[1], height / size[0]))
            axes.imshow(picture, interpolation="nearest", aspect="auto")
            axes.set_axis_off()
            axes.text(0.02, 0.98, caption, color="yellow", fontsize=7, va="top", transform=axes.transAxes)
    figure.text(0.005, 1 - 3 / size[0], title, color="white", fontsize=9, va="top")
    figure.savefig(path, dpi=100, facecolor="black")
    return size


# ---------------------------------------------------------------- the whole run

def inspect_dataset_masks(dataset_name_or_id, configuration: str = "3d_fullres", plans_identifier: str = "nnUNetPlans",
                          output_folder=None, cases=None, num_slices: int = 5, panel_px: int = 192) -> dict:
    """Statistics and overlays of the stored masks of every (or the named) case.

    Prints the table and summary, writes `<case>.png` and `stats.json` to `output_folder`
    (default `<mask folder>/qa`) and returns the JSON content. Raises MaskQAError when masks
    are missing (naming the command that makes them) and dataset_masks.MaskGenerationError
    when the preprocessed dataset itself is missing.
    """
    from tqdm import tqdm

    if num_slices < 1:
        raise MaskQAError(f"num_slices must be >= 1, got {num_slices}")
    layout = resolve_mask_cases(dataset_name_or_id, configuration, plans_identifier, cases)
    output = Path(output_folder) if output_folder is not None else layout["mask_folder"] / "qa"
    output.mkdir(parents=True, exist_ok=True)
    manager = plans_manager(layout["plans_file"])
    stats = {}
    for case in tqdm(layout["cases"], desc="mask QA", unit="case"):
        loaded = load_case(layout, case, configuration, manager)
        body = case_body(loaded["image"], loaded["spacing"], loaded["stack"].metadata)
        stats[case] = case_statistics(loaded["stack"], body, loaded["spacing"])
        view = view_geometry(loaded["properties"], loaded["transpose_forward"])
        render_overlays(loaded["image"], loaded["stack"], body, loaded["spacing"], output / f"{case}.png", view,
                        num_slices, panel_px, title=f"{case}: {len(loaded['stack'])} masks")
    summary = summarize_cases(stats)
    for note in layout["notes"]:
        print(f"note: {note}")
    print(format_table(stats, summary))
    result = {"dataset": layout["dataset_name"], "configuration": configuration, "plans": plans_identifier,
              "mask_folder": str(layout["mask_folder"]), "body": "nnunet_mass.masks.supervoxels.body_mask",
              "cases": stats, "summary": summary, "notes": layout["notes"]}
    (output / "stats.json").write_text(json.dumps(to_json(result), indent=1))
    print(f"overlays and stats.json -> {output}")
    return result


def to_json(value):
    """NaN/inf become null (strict JSON)."""
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
