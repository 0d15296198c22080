"""The dlib 68-point face layout, once: index groups and the inter-ocular distance.

Indices follow iBUG 300-W / dlib's shape_predictor_68_face_landmarks: 0-16 jaw, 17-26 brows,
27-35 nose, 36-41 the subject's right eye (on the image's left), 42-47 the left eye, 48-59 outer
lips, 60-67 inner lips.
"""

from __future__ import annotations

import numpy as np

N_POINTS = 68
JAW = slice(0, 17)
BROWS = slice(17, 27)
NOSE = slice(27, 36)
NOSE_TIP = 30
LEFT_EYE = slice(36, 42)  # the subject's right eye, on the image's left
RIGHT_EYE = slice(42, 48)  # the subject's left eye, on the image's right
MOUTH = slice(48, 68)  # outer + inner lips
MOUTH_CORNERS = (48, 54)  # outer mouth corners, image left then right
OUTER_LIPS = slice(48, 60)
INNER_LIPS = slice(60, 68)
INNER_LIP_PAIRS = ((61, 67), (62, 66), (63, 65))  # upper / lower inner-lip points facing each other
LID_PAIRS = ((37, 41), (38, 40), (43, 47), (44, 46))  # upper / lower eyelid points facing each other


def eye_centres(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centres (..., 2) of the image-left and image-right eyes of landmarks (..., 68, 2)."""
    lm = np.asarray(landmarks)
    return lm[..., LEFT_EYE, :].mean(-2), lm[..., RIGHT_EYE, :].mean(-2)


def interocular(landmarks: np.ndarray) -> np.ndarray:
    """Distance between the eye centres, (...,) in the landmarks' unit, of landmarks (..., 68, 2)."""
    left, right = eye_centres(landmarks)
    return np.linalg.norm(right - left, axis=-1)
