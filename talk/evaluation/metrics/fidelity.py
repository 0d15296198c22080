"""How much of a face an image codec (or a render) keeps: colour, sharpness and identity.

Each compares a reconstruction (or a generated frame) with its reference, over the face region:

- ``delta_e``: mean CIELAB ΔE (CIE76) per pixel; ~2.3 is a just-noticeable difference;
- ``sharpness_ratio``: Laplacian variance of the reconstruction / of the reference (1 = as sharp,
  below 1 = blurred; the field's focus measure, Pech-Pacheco et al. 2000);
- ``identity_distance``: euclidean distance between dlib's 128-d face descriptors (the same person
  is < 0.6 by dlib's own threshold).

Images are uint8 (N, H, W, 3) RGB; ``face_mask`` is the region scored (a box from the 68 landmarks
of the reference, or the central ellipse when none is found).
"""

from __future__ import annotations

import numpy as np

_SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                         [0.2126729, 0.7151522, 0.0721750],
                         [0.0193339, 0.1191920, 0.9503041]])
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])


def rgb_to_lab(img: np.ndarray) -> np.ndarray:
    """sRGB uint8 (..., 3) -> CIELAB float64 (..., 3) (D65 white)."""
    c = np.asarray(img, np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = lin @ _SRGB_TO_XYZ.T / _WHITE_D65
    d = 6 / 29
    f = np.where(xyz > d**3, np.cbrt(xyz), xyz / (3 * d * d) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def central_mask(h: int, w: int) -> np.ndarray:
    """(H, W) bool: the central ellipse (half the side across), where an aligned crop's face is."""
    y, x = np.mgrid[:h, :w]
    return ((x - (w - 1) / 2) / (w / 4)) ** 2 + ((y - (h - 1) / 2) / (h / 4)) ** 2 <= 1


def box_mask(h: int, w: int, box) -> np.ndarray:
    """(H, W) bool inside the box (l, t, r, b) px, clipped to the image."""
    l, t, r, b = (int(round(v)) for v in box)
    m = np.zeros((h, w), bool)
    m[max(0, t) : max(0, min(h, b)), max(0, l) : max(0, min(w, r))] = True
    return m if m.any() else central_mask(h, w)


def delta_e(rec: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Mean CIE76 ΔE per image (N,) over ``mask`` ((H, W) or (N, H, W) bool; None = all pixels)."""
    d = np.linalg.norm(rgb_to_lab(rec) - rgb_to_lab(ref), axis=-1)  # (N, H, W)
    if mask is None:
        return d.reshape(len(d), -1).mean(1)
    m = np.broadcast_to(mask, d.shape)
    return (d * m).reshape(len(d), -1).sum(1) / np.maximum(1, m.reshape(len(d), -1).sum(1))


def laplacian_variance(img: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Variance of the 4-neighbour Laplacian of the luma per image (N,), over ``mask``."""
    y = np.asarray(img, np.float64) @ np.array([0.299, 0.587, 0.114])  # (N, H, W)
    lap = np.zeros_like(y)
    lap[:, 1:-1, 1:-1] = (y[:, :-2, 1:-1] + y[:, 2:, 1:-1] + y[:, 1:-1, :-2] + y[:, 1:-1, 2:]
                          - 4 * y[:, 1:-1, 1:-1])
    inner = np.zeros(y.shape[1:], bool)
    inner[1:-1, 1:-1] = True
    m = np.broadcast_to(inner if mask is None else (mask & inner), y.shape)
    out = np.empty(len(y))
    for i in range(len(y)):
        out[i] = lap[i][m[i]].var() if m[i].any() else np.nan
    return out


def sharpness_ratio(rec: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Laplacian variance of ``rec`` / of ``ref`` per image (N,)."""
    return laplacian_variance(rec, mask) / np.maximum(laplacian_variance(ref, mask), 1e-12)


def face_boxes(analyzer, frames: np.ndarray) -> list:
    """The largest dlib detection per frame (4,) or None."""
    return [analyzer.detect(np.ascontiguousarray(f)) for f in frames]


def identity_distance(analyzer, rec: np.ndarray, ref: np.ndarray, boxes: list) -> np.ndarray:
    """dlib-128 descriptor distance per image pair (N,), both described inside the reference's box
    (NaN where the reference has no detected face)."""
    out = np.full(len(ref), np.nan)
    for i, box in enumerate(boxes):
        if box is None:
            continue
        a = analyzer.descriptor(np.ascontiguousarray(rec[i]), box)
        b = analyzer.descriptor(np.ascontiguousarray(ref[i]), box)
        out[i] = float(np.linalg.norm(a - b))
    return out


def fidelity(rec: np.ndarray, ref: np.ndarray, analyzer=None) -> dict[str, np.ndarray]:
    """Per image (N,): ΔE and sharpness ratio over the reference's face box, identity distance
    (when a dlib ``FaceAnalyzer`` is given)."""
    n, h, w = ref.shape[:3]
    boxes = face_boxes(analyzer, ref) if analyzer is not None else [None] * n
    masks = np.stack([central_mask(h, w) if b is None else box_mask(h, w, b) for b in boxes])
    out = {"delta_e": delta_e(rec, ref, masks), "sharpness": sharpness_ratio(rec, ref, masks)}
    if analyzer is not None:
        out["identity"] = identity_distance(analyzer, rec, ref, boxes)
        out["face_found"] = np.array([b is not None for b in boxes], float)
    return out
