"""Landmark distances M-LMD and F-LMD (Chen et al. 2019, "Hierarchical cross-modal talking face
generation"; used by the emotional talking-head papers on MEAD).

Mean Euclidean distance between corresponding dlib 68-point landmarks of generated and real
frames, over the mouth points (48-67, M-LMD) or all 68 (F-LMD), without re-centring. Distances
are in crop pixels rescaled to a 256 px crop (``px@256``), so profiles at 128 or 512 px report
comparable numbers.
"""

from __future__ import annotations

import numpy as np

from talk.media.landmarks import MOUTH

LMD_REFERENCE_SIZE = 256  # px: distances are reported as if the crop were this wide


def landmark_distance(gen: np.ndarray, real: np.ndarray, crop_size: int, mouth_only: bool) -> np.ndarray:
    """Per-frame mean point distance (T,) in px@256 for landmarks (T, 68, 2)."""
    gen = np.asarray(gen, np.float64)
    real = np.asarray(real, np.float64)
    if gen.shape != real.shape:
        raise ValueError(f"landmark shapes differ: {gen.shape} vs {real.shape}")
    if mouth_only:
        gen, real = gen[:, MOUTH], real[:, MOUTH]
    d = np.linalg.norm(gen - real, axis=-1).mean(-1)  # (T,)
    return d * (LMD_REFERENCE_SIZE / crop_size)


def m_lmd(gen: np.ndarray, real: np.ndarray, crop_size: int) -> np.ndarray:
    return landmark_distance(gen, real, crop_size, mouth_only=True)


def f_lmd(gen: np.ndarray, real: np.ndarray, crop_size: int) -> np.ndarray:
    return landmark_distance(gen, real, crop_size, mouth_only=False)
