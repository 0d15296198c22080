"""dlib face analysis of aligned crops: HOG detection, 68 landmarks, 128-d descriptors.

The same analyser scores real and generated frames, so every landmark / identity metric compares
like with like. Frames without a detection borrow a box (the nearest detected frame of the clip,
else ``fallback`` boxes such as the real clip's) so that landmarks stay defined; ``found`` records
the detection itself and becomes the ``face_rate`` metric.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from talk.core.weights import dlib_model
from talk.media.landmarks import N_POINTS

DESCRIPTOR_DIM = 128  # dlib_face_recognition_resnet_model_v1's descriptor size


@dataclasses.dataclass
class FaceTrack:
    """Per-frame face analysis of one clip."""

    found: np.ndarray  # (T,) bool: the detector found a face in this frame
    boxes: np.ndarray  # (T, 4) float32 left, top, right, bottom (px) used for the landmarks
    landmarks: np.ndarray  # (T, 68, 2) float32 px (x, y)
    descriptors: np.ndarray  # (T, 128) float32, NaN on frames whose descriptor was not computed

    def __len__(self) -> int:
        return len(self.found)

    @property
    def has_descriptor(self) -> np.ndarray:  # (T,) bool
        return ~np.isnan(self.descriptors[:, 0])


class FaceAnalyzer:
    """dlib's HOG detector + 68-point shape predictor + ResNet 128-d face descriptor.

    ``upsample``: HOG pyramid upsampling; -1 picks 1 for frames under 256 px (faces in a 128 px
    crop are ~70 px wide, below the detector's 80 px window) and 0 otherwise.
    """

    def __init__(self, upsample: int = -1, descriptors: bool = True):
        import dlib

        self.upsample = upsample
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(dlib_model("landmarks_68")))
        self.encoder = dlib.face_recognition_model_v1(str(dlib_model("descriptor"))) if descriptors else None
        self._rect = dlib.rectangle
        # Memo of work already done, keyed by frame content: the ceiling row re-scores the real
        # frames and the floor row repeats one frame, so most of their analysis is free.
        self._detections: dict[bytes, np.ndarray | None] = {}  # frame digest -> box or None
        self._shapes: dict[bytes, np.ndarray] = {}  # frame digest + box -> (68, 2) landmarks
        self._descriptors: dict[bytes, np.ndarray] = {}  # frame digest + box -> (128,)

    def _upsample_for(self, frame: np.ndarray) -> int:
        if self.upsample >= 0:
            return self.upsample
        return 1 if min(frame.shape[:2]) < 256 else 0

    def detect(self, frame: np.ndarray) -> np.ndarray | None:
        """The largest face's box (4,) float32 l, t, r, b, or None."""
        rects = self.detector(frame, self._upsample_for(frame))
        if len(rects) == 0:
            return None
        r = max(rects, key=lambda r: r.width() * r.height())
        return np.array([r.left(), r.top(), r.right(), r.bottom()], np.float32)

    def _shape(self, frame: np.ndarray, box: np.ndarray):
        l, t, r, b = (int(round(v)) for v in box)
        return self.predictor(frame, self._rect(l, t, r, b))

    def landmarks(self, frame: np.ndarray, box: np.ndarray) -> np.ndarray:
        """68 points (68, 2) float32 px inside ``box``."""
        shape = self._shape(frame, box)
        return np.array([(p.x, p.y) for p in shape.parts()], np.float32)

    def descriptor(self, frame: np.ndarray, box: np.ndarray) -> np.ndarray:
        """dlib's 128-d face descriptor (128,) float32 (aligned 150 px chip from the 68 points)."""
        if self.encoder is None:
            raise RuntimeError("FaceAnalyzer was built without descriptors")
        shape = self._shape(frame, box)
        return np.array(self.encoder.compute_face_descriptor(frame, shape), np.float32)

    def analyse(
        self,
        frames: np.ndarray,
        descriptor_stride: int = 1,
        fallback: np.ndarray | None = None,
    ) -> FaceTrack:
        """Analyse a clip (T, H, W, 3) uint8.

        Descriptors are computed on frames 0, k, 2k, ... (k = ``descriptor_stride``; 0 = none).
        ``fallback`` (T, 4) boxes serve frames of a clip in which no frame has a detection; without
        it such a clip uses a centred box half the crop's side. Identical frames are analysed once
        (a clip repeating its reference frame costs one frame).
        """
        frames = np.ascontiguousarray(frames, dtype=np.uint8)  # dlib wants C-contiguous uint8
        n, h, w = frames.shape[:3]
        digests = [hashlib.blake2b(f.tobytes(), digest_size=16).digest() for f in frames]
        found = np.zeros(n, bool)
        boxes = np.full((n, 4), np.nan, np.float32)
        for t, frame in enumerate(frames):
            if digests[t] not in self._detections:
                self._detections[digests[t]] = self.detect(frame)
            box = self._detections[digests[t]]
            if box is not None:
                found[t] = True
                boxes[t] = box
        if found.any():  # borrow the nearest detected frame's box
            idx = np.flatnonzero(found)
            for t in np.flatnonzero(~found):
                boxes[t] = boxes[idx[np.argmin(np.abs(idx - t))]]
        elif fallback is not None:
            boxes[:] = np.asarray(fallback, np.float32)[:n]
        else:
            s = min(h, w) / 4
            boxes[:] = (w / 2 - s, h / 2 - s, w / 2 + s, h / 2 + s)

        landmarks = np.empty((n, N_POINTS, 2), np.float32)
        descriptors = np.full((n, DESCRIPTOR_DIM), np.nan, np.float32)
        for t, frame in enumerate(frames):
            key = digests[t] + boxes[t].tobytes()
            if key not in self._shapes:
                self._shapes[key] = self.landmarks(frame, boxes[t])
            landmarks[t] = self._shapes[key]
            if descriptor_stride > 0 and t % descriptor_stride == 0:
                if key not in self._descriptors:
                    self._descriptors[key] = self.descriptor(frame, boxes[t])
                descriptors[t] = self._descriptors[key]
        return FaceTrack(found=found, boxes=boxes, landmarks=landmarks, descriptors=descriptors)

    def clear_cache(self) -> None:
        self._detections.clear()
        self._shapes.clear()
        self._descriptors.clear()
