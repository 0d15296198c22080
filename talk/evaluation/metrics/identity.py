"""Identity: dlib-128 descriptor distance of generated frames to the reference, and its drift.

dlib's face recognition ResNet (``dlib_face_recognition_resnet_model_v1``) maps a face to a
128-d descriptor; two faces closer than 0.6 (Euclidean) are the same person by dlib's own
threshold (99.38% on LFW). ``distances`` gives one value per frame; ``drift`` says whether a clip
moves away from the person over time: the mean distance over its last ``window`` frames minus
that over its first (a positive drift = the face slowly becomes someone else).
"""

from __future__ import annotations

import math

import numpy as np

SAME_PERSON = 0.6  # dlib's threshold: descriptors closer than this are the same person


def distances(descriptors: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(T,) Euclidean distance of each descriptor (T, 128) to the reference (128,); NaN rows stay NaN."""
    d = np.asarray(descriptors, np.float64)
    return np.linalg.norm(d - np.asarray(reference, np.float64)[None], axis=1)


def drift(values: np.ndarray, window: int) -> float:
    """Mean of the last ``window`` frames of ``values`` (T,) minus the mean of the first (NaN
    frames skipped); a clip shorter than two windows uses half its length for each, so the two
    never overlap. NaN when either window has no value."""
    v = np.asarray(values, np.float64)
    w = min(int(window), len(v) // 2)
    if w < 1:
        return math.nan
    first, last = v[:w], v[len(v) - w:]
    if np.isnan(first).all() or np.isnan(last).all():
        return math.nan
    return float(np.nanmean(last) - np.nanmean(first))
