"""Grid-free description of one phantom: where each structure sits, how big and how turned.

Frame: millimetres, axis order (z, y, x) like the arrays, origin at the centre of the volume.
The axes point superior (z), anterior (y) and to the patient's right (x); that is what the
direction matrix written by `dataset.py` says in ITK's LPS world. So the liver has x > 0,
the spleen x < 0, the spine y < 0 and the lungs z > 0.

The sizes describe a miniature torso (about 10 cm wide) so that it fits the default
64^3 volume at 2.5 x 2 x 2 mm. `sample_layout` draws a fixed number of values, so one
generator state gives the same anatomy on any grid it is later rasterised on.
"""
from dataclasses import dataclass

import numpy as np

# How far (mm) the anatomy can reach from the volume centre, jitter included; the
# rasteriser shrinks everything uniformly when the field of view is smaller than this.
REACH_ZYX = np.array([55.0, 49.0, 60.0])
_VERTEBRA_JITTER_COUNT = 32  # per-vertebra size factors, reused cyclically along z


@dataclass(frozen=True)
class Ellipsoid:
    center: np.ndarray  # (z, y, x) mm
    semi_axes: np.ndarray  # mm along the local axes (first local axis is z-like)
    rotation: np.ndarray  # 3x3; column i is local axis i expressed in the (z, y, x) frame
    exponents: tuple = (2.0, 2.0, 2.0)  # > 2 flattens the caps along that local axis

    def at_local(self, offset) -> np.ndarray:
        """The frame position of a point given in this ellipsoid's local axes (mm)."""
        return self.center + self.rotation @ np.asarray(offset, dtype=float)


@dataclass(frozen=True)
class Body:
    center_yx: np.ndarray
    semi_yx: np.ndarray  # anterior half-depth and half-width of the torso, mm
    posterior_squash: float  # the back is flatter than the belly
    wobble: tuple  # (relative amplitude, period mm, phase): the cross-section varies along z
    fat_mm: float  # subcutaneous fat layer
    muscle_mm: float  # abdominal wall inside the fat


@dataclass(frozen=True)
class Kidney:
    outer: Ellipsoid
    hilum: Ellipsoid  # removed from `outer` on the medial side: the bean's notch
    medulla: Ellipsoid  # darker core in CT
    fat: Ellipsoid  # perirenal fat capsule painted before the kidney


@dataclass(frozen=True)
class Spine:
    y0: float
    x0: float
    pitch: float  # vertebra + disc height, mm
    phase: float  # z of one vertebra centre
    curve: tuple  # (amplitude mm, period mm, phase): gentle lordosis in y
    vertebra_jitter: np.ndarray  # (_VERTEBRA_JITTER_COUNT, 3) size factors (z, y, x)

    def center_yx(self, z):
        """Centre of the vertebral bodies at height(s) z."""
        amp, period, phase = self.curve
        return self.y0 + amp * np.sin(2 * np.pi * np.asarray(z) / period + phase), self.x0


@dataclass(frozen=True)
class Vessel:
    radius: float
    front_of_spine: float  # distance (mm) from the spine-curve centre to the vessel centre, in y
    x0: float
    wiggle: tuple  # (amp_y, amp_x, period mm, phase_y, phase_x)

    def center_yx(self, spine: Spine, z):
        """The vessel follows the spine's curve plus its own sideways meander."""
        amp_y, amp_x, period, phase_y, phase_x = self.wiggle
        angle = 2 * np.pi * np.asarray(z) / period
        spine_y, _ = spine.center_yx(z)
        return (spine_y + self.front_of_spine + amp_y * np.sin(angle + phase_y),
                self.x0 + amp_x * np.sin(angle + phase_x))


@dataclass(frozen=True)
class Layout:
    body: Body
    lungs: tuple  # Ellipsoids, unlabeled
    paraspinal: tuple  # Ellipsoids (long in z), unlabeled muscle
    liver: tuple  # Ellipsoids: right lobe (lesions go here), left lobe, caudate
    kidneys: tuple  # Kidney, right then left
    spleen: tuple  # (body, notch) Ellipsoids: a crescent
    vessel: Vessel
    spine: Spine
    lesions: tuple  # spheres, first one largest


def rotation_matrix(axis, angle: float) -> np.ndarray:
    """Rodrigues' formula in (z, y, x) coordinates."""
    k = np.asarray(axis, dtype=float)
    k = k / np.linalg.norm(k)
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.cos(angle) * np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * np.outer(k, k)


def small_rotation(rng: np.random.Generator, max_degrees: float) -> np.ndarray:
    return rotation_matrix(rng.normal(size=3), np.deg2rad(rng.uniform(-max_degrees, max_degrees)))


def _jittered(rng, center, semi_axes, shift_mm=3.0, scale=0.1, max_degrees=10.0, base=np.eye(3)) -> Ellipsoid:
    return Ellipsoid(np.asarray(center, float) + rng.uniform(-shift_mm, shift_mm, 3),
                     np.asarray(semi_axes, float) * rng.uniform(1 - scale, 1 + scale, 3),
                     base @ small_rotation(rng, max_degrees))


def sample_layout(rng: np.random.Generator) -> Layout:
    """Draw one anatomy. The order and number of draws never change (grid-independence)."""
    body = _sample_body(rng)
    c = np.array([0.0, *body.center_yx])  # organs move with the body
    liver = _sample_liver(rng, c)
    return Layout(
        body=body,
        lungs=tuple(_jittered(rng, c + (62, -4, side * 24), (38, 26, 19), max_degrees=8) for side in (1, -1)),
        paraspinal=tuple(_jittered(rng, c + (0, -27, side * 13), (1e4, 6, 8), shift_mm=1, max_degrees=0)
                         for side in (1, -1)),
        liver=liver,
        kidneys=tuple(_sample_kidney(rng, c, side) for side in (1, -1)),
        spleen=_sample_spleen(rng, c),
        vessel=_sample_vessel(rng, c),
        spine=_sample_spine(rng, c),
        lesions=_sample_lesions(rng, liver[0]),
    )


def _sample_body(rng) -> Body:
    return Body(center_yx=rng.uniform(-2, 2, 2),
                semi_yx=np.array([42.0, 52.0]) * rng.uniform(0.94, 1.06, 2),
                posterior_squash=rng.uniform(0.88, 0.95),
                wobble=(rng.uniform(0.01, 0.04), rng.uniform(150, 300), rng.uniform(0, 2 * np.pi)),
                fat_mm=rng.uniform(3, 6), muscle_mm=rng.uniform(3, 5))


def _sample_liver(rng, c) -> tuple:
    """Three overlapping ellipsoids give a lobed organ under the right lung."""
    return (_jittered(rng, c + (14, 4, 20), (28, 24, 21)),  # right lobe
            _jittered(rng, c + (20, 16, -6), (13, 11, 22), max_degrees=12),  # left lobe, anterior
            _jittered(rng, c + (8, -3, 10), (12, 8, 7)))  # caudate, beside the vessel


def _sample_kidney(rng, c, side: int) -> Kidney:
    # Tilt about y so the upper pole leans medially (column 0 of the rotation gets x of sign -side).
    tilt = rotation_matrix((0, 1, 0), side * np.deg2rad(rng.uniform(10, 20)))
    outer = _jittered(rng, c + (-20, -14, side * 22), (18, 8, 10), max_degrees=8, base=tilt)
    medial = -side  # local x points like frame x, so the medial side is -side
    sx = outer.semi_axes[2]
    return Kidney(
        outer=outer,
        hilum=Ellipsoid(outer.at_local((0, 0, medial * 0.85 * sx)), outer.semi_axes * (0.4, 0.45, 0.45),
                        outer.rotation),
        medulla=Ellipsoid(outer.at_local((0, 0, medial * 0.1 * sx)), outer.semi_axes * 0.6, outer.rotation),
        fat=Ellipsoid(outer.center, outer.semi_axes * 1.3, outer.rotation),
    )


def _sample_spleen(rng, c) -> tuple:
    """A crescent: an ellipsoid with its medial (x > 0) face scooped out."""
    body = _jittered(rng, c + (16, -6, -27), (16, 12, 7), max_degrees=15)
    notch = Ellipsoid(body.at_local((0, 0, 1.1 * body.semi_axes[2])), body.semi_axes * (1.2, 0.8, 0.7),
                      body.rotation)
    return body, notch


def _sample_vessel(rng, c) -> Vessel:
    radius = 5.0 * rng.uniform(0.85, 1.15)
    return Vessel(radius=radius, front_of_spine=7 * 1.1 + 2 + radius, x0=c[2] + rng.uniform(-7, -4),
                  wiggle=(rng.uniform(0.5, 1.5), rng.uniform(2, 4), rng.uniform(100, 200),
                          rng.uniform(0, 2 * np.pi), rng.uniform(0, 2 * np.pi)))


def _sample_spine(rng, c) -> Spine:
    pitch = rng.uniform(15, 18)
    return Spine(y0=c[1] - 17 + rng.uniform(-2, 2), x0=c[2] + rng.uniform(-1.5, 1.5), pitch=pitch,
                 phase=rng.uniform(0, pitch),
                 curve=(rng.uniform(1, 3), rng.uniform(250, 400), rng.uniform(0, 2 * np.pi)),
                 vertebra_jitter=rng.uniform(0.92, 1.08, (_VERTEBRA_JITTER_COUNT, 3)))


def vertebra_parts(spine: Spine, k: int) -> tuple:
    """Ellipsoids of vertebra k (k = 0 is centred at z = spine.phase): body, spinous and
    transverse processes, joined so that each vertebra is one connected bone."""
    z = spine.phase + k * spine.pitch
    y, x = spine.center_yx(z)
    fz, fy, fx = spine.vertebra_jitter[k % _VERTEBRA_JITTER_COUNT]
    half = 0.39 * spine.pitch * fz  # leaves ~22% of the pitch as disc
    eye = np.eye(3)
    return (Ellipsoid(np.array([z, y, x]), np.array([half, 7 * fy, 8 * fx]), eye, (6.0, 2.0, 2.0)),
            Ellipsoid(np.array([z, y - 10.5 * fy, x]), np.array([0.7 * half, 4.5 * fy, 2.5 * fx]), eye),
            *(Ellipsoid(np.array([z, y - 6 * fy, x + side * 8 * fx]), np.array([0.5 * half, 3.0, 7 * fx]), eye)
              for side in (1, -1)))


def _sample_lesions(rng, lobe: Ellipsoid, count_max: int = 3) -> tuple:
    """1 to 3 spheres well inside the right lobe; 3 are always drawn to keep the draw count fixed."""
    count = int(rng.integers(1, count_max + 1))
    directions = rng.normal(size=(count_max, 3))
    depths = 0.45 * rng.uniform(0, 1, count_max) ** (1 / 3)  # uniform in a ball of 0.45 lobe radii
    radii = np.concatenate([[rng.uniform(6, 8)], rng.uniform(3, 6, count_max - 1)])
    spheres = []
    for direction, depth, radius in zip(directions[:count], depths, radii):
        local = direction / np.linalg.norm(direction) * depth * lobe.semi_axes
        spheres.append(Ellipsoid(lobe.at_local(local), np.full(3, radius), np.eye(3)))
    return tuple(spheres)
