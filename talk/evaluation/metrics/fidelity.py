"""How much of a face an image codec keeps: the VAE round trip against its input, pair by pair.

Per image pair (reconstruction, input), over the input's face (the convex hull of its 68 dlib
landmarks, talk/evaluation/metrics/appearance.py; the central ellipse where no face is found):

- ``delta_e``: mean CIELAB ΔE (CIE76) per pixel; ~2.3 is a just-noticeable difference;
- ``sharpness``: Laplacian variance of the reconstruction / of the input (1 = as sharp);
- ``identity``: euclidean distance between dlib's 128-d descriptors of the two, both taken from
  the input's landmarks (the same person is < 0.6 by dlib's own threshold);
- ``face_found``: whether dlib found the input's face.

fit_vae reports their means in metrics.json; benchmarks/vae_quality.py on faces it never saw.
"""

from __future__ import annotations

import numpy as np

from talk.evaluation.metrics.appearance import face_masks, laplacian_variance, rgb_to_lab


def central_mask(h: int, w: int) -> np.ndarray:
    """(H, W) bool: the central ellipse (half the side across), where an aligned crop's face is."""
    y, x = np.mgrid[:h, :w]
    return ((x - (w - 1) / 2) / (w / 4)) ** 2 + ((y - (h - 1) / 2) / (h / 4)) ** 2 <= 1


def pair_delta_e(rec: np.ndarray, ref: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(N,) mean CIE76 ΔE of each pair over its mask (N, H, W)."""
    d = np.linalg.norm(rgb_to_lab(rec) - rgb_to_lab(ref), axis=-1)  # (N, H, W)
    return (d * masks).sum((1, 2)) / np.maximum(1, masks.sum((1, 2)))


def fidelity(rec: np.ndarray, ref: np.ndarray, analyzer=None) -> dict[str, np.ndarray]:
    """Per pair (N,) of uint8 (N, H, W, 3) images: ``delta_e``, ``sharpness`` and, given a dlib
    ``FaceAnalyzer`` (talk/evaluation/metrics/face.py), ``identity`` and ``face_found``."""
    rec, ref = np.asarray(rec, np.uint8), np.asarray(ref, np.uint8)
    n, h, w = ref.shape[:3]
    masks = np.broadcast_to(central_mask(h, w), (n, h, w)).copy()
    identity, found = np.full(n, np.nan), np.zeros(n, bool)
    if analyzer is not None:
        for i in range(n):
            box = analyzer.detect(np.ascontiguousarray(ref[i]))
            if box is None:
                continue
            found[i] = True
            lm = analyzer.landmarks(np.ascontiguousarray(ref[i]), box)
            masks[i] = face_masks(lm, h, w)[0]
            a = analyzer.descriptor(np.ascontiguousarray(rec[i]), box)
            b = analyzer.descriptor(np.ascontiguousarray(ref[i]), box)
            identity[i] = float(np.linalg.norm(a - b))
    with np.errstate(invalid="ignore", divide="ignore"):
        sharp = laplacian_variance(rec, masks) / np.maximum(laplacian_variance(ref, masks), 1e-6)
    out = {"delta_e": pair_delta_e(rec, ref, masks), "sharpness": sharp}
    if analyzer is not None:
        out["identity"], out["face_found"] = identity, found.astype(float)
    return out
