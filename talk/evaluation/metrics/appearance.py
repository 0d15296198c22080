"""How a face looks, against a reference image of it: sharpness and colour over the face region.

- Face region: the convex hull of the 68 dlib landmarks (jaw line and brows bound it), one mask
  per frame (``face_masks``).
- ``laplacian_variance``: variance of the 4-neighbour Laplacian of the grey image (the kernel of
  OpenCV's ``cv2.Laplacian(ksize=1)``; grey = 0.299 R + 0.587 G + 0.114 B) over the face
  region: a blurred face has less of it. ``sharpness_ratio`` divides a frame's by the reference's.
- ``rgb_to_lab``: sRGB (IEC 61966-2-1) to CIELAB under D65. ``delta_e``: per-frame mean CIE76
  colour difference (Euclidean in L*a*b*) to the reference over the reference's face region,
  pixel by pixel (motion and expression count too); ``colour_shift``: CIE76 difference of the
  two faces' mean L*a*b* colours (a sepia cast or a darkened face, insensitive to motion).

`evaluate` uses the reference crop's VAE round trip as the reference (docs/method.md §3): the
denoiser cannot look better than its VAE, so 1.0 and 0 are the attainable values.
All functions are vectorised over frames: (T, H, W, 3) uint8 in.
"""

from __future__ import annotations

import numpy as np

GREY_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601 luma, OpenCV's RGB2GRAY
D65_WHITE = np.array([0.95047, 1.0, 1.08883])  # XYZ of the D65 white point (Y = 1)
SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]])  # linear sRGB -> XYZ (D65)


def _srgb_linear_lut() -> np.ndarray:
    c = np.arange(256) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


_LINEAR = _srgb_linear_lut()  # uint8 code -> linear light


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """uint8 sRGB (..., 3) -> float32 CIELAB (..., 3): L* in [0, 100], a*, b* about [-128, 127]."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.shape[-1] != 3:
        raise ValueError(f"expected uint8 (..., 3) RGB, got {rgb.shape} {rgb.dtype}")
    xyz = _LINEAR[rgb] @ (SRGB_TO_XYZ / D65_WHITE[:, None]).T.astype(np.float32)  # (..., 3), white = 1
    eps, kappa = 216 / 24389, 24389 / 27
    f = np.where(xyz > eps, np.cbrt(xyz), (kappa * xyz + 16) / 116)
    lab = np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)
    return lab.astype(np.float32)


def face_masks(landmarks: np.ndarray, height: int, width: int) -> np.ndarray:
    """(T, H, W) bool: the convex hull of each frame's 68 landmarks (T, 68, 2) (px)."""
    import cv2

    lm = np.asarray(landmarks, np.float32)
    if lm.ndim == 2:
        lm = lm[None]
    out = np.zeros((len(lm), height, width), np.uint8)
    for t, pts in enumerate(lm):
        hull = cv2.convexHull(np.round(pts).astype(np.int32))
        cv2.fillConvexPoly(out[t], hull, 1)
    return out.astype(bool)


def grey(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, H, W) float32 luma in [0, 255]."""
    return np.asarray(frames, np.float32) @ GREY_WEIGHTS


def laplacian_variance(frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(T,) variance of the grey 4-neighbour Laplacian over each frame's mask (T, H, W) (the one-
    pixel border, where the kernel does not fit, is left out); NaN where a mask is empty."""
    g = grey(frames)
    lap = g[:, :-2, 1:-1] + g[:, 2:, 1:-1] + g[:, 1:-1, :-2] + g[:, 1:-1, 2:] - 4 * g[:, 1:-1, 1:-1]
    m = np.broadcast_to(np.asarray(masks, bool), g.shape)[:, 1:-1, 1:-1]
    n = m.sum((1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(m, lap, 0).sum((1, 2)) / n
        var = np.where(m, (lap - mean[:, None, None]) ** 2, 0).sum((1, 2)) / n
    return np.where(n > 0, var, np.nan)


def sharpness_ratio(frames: np.ndarray, masks: np.ndarray, reference: np.ndarray, reference_mask: np.ndarray) -> np.ndarray:
    """(T,) face sharpness of each frame / the reference's (H, W, 3) over its mask (H, W)."""
    ref = laplacian_variance(reference[None], reference_mask[None])[0]
    return laplacian_variance(frames, masks) / max(float(ref), 1e-6)


def face_colour(frames: np.ndarray, masks: np.ndarray, reference: np.ndarray, reference_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(``delta_e``, ``colour_shift``) in one pass: CIELAB is computed once, over the box that
    holds every mask (the costly part, ~2 ms per 128 px frame in full)."""
    masks = np.asarray(masks, bool)
    union = masks.any(0) | reference_mask
    if not union.any():
        nan = np.full(len(frames), np.nan)
        return nan, nan
    ys, xs = np.nonzero(union)
    box = np.s_[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]
    lab = rgb_to_lab(np.asarray(frames)[:, box[0], box[1]])  # (T, h, w, 3)
    ref = rgb_to_lab(np.asarray(reference)[box])  # (h, w, 3)
    m, rm = masks[:, box[0], box[1]], reference_mask[box]
    de = np.linalg.norm(lab[:, rm] - ref[rm][None], axis=-1).mean(1) if rm.any() else np.full(len(frames), np.nan)
    n = m.sum((1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.einsum("thwc,thw->tc", lab, m.astype(np.float32)) / n[:, None]
    ref_mean = ref[rm].mean(0) if rm.any() else np.full(3, np.nan)
    return de, np.linalg.norm(mean - ref_mean, axis=-1)


def delta_e(frames: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(T,) mean CIE76 ΔE of each frame (T, H, W, 3) to the reference (H, W, 3), pixel by pixel,
    over the reference's face mask (H, W)."""
    lab = rgb_to_lab(np.asarray(frames)[:, mask])  # (T, P, 3)
    ref = rgb_to_lab(np.asarray(reference)[mask])  # (P, 3)
    if lab.shape[1] == 0:
        return np.full(len(frames), np.nan)
    return np.linalg.norm(lab - ref[None], axis=-1).mean(1)


def mean_lab(frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(T, 3) mean L*a*b* colour of each frame over its mask; NaN where a mask is empty."""
    lab = rgb_to_lab(frames)
    m = np.broadcast_to(np.asarray(masks, bool), lab.shape[:3])[..., None]
    n = m.sum((1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(m, lab, 0).sum((1, 2)) / n


def colour_shift(frames: np.ndarray, masks: np.ndarray, reference: np.ndarray, reference_mask: np.ndarray) -> np.ndarray:
    """(T,) CIE76 ΔE between each frame's mean face colour (over its mask) and the reference's."""
    ref = mean_lab(reference[None], reference_mask[None])[0]
    return np.linalg.norm(mean_lab(frames, masks) - ref, axis=-1)
