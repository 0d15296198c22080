"""Faces: detection, 68-point landmark tracking, temporal smoothing and crop transforms.

Library code shared by `crop_align` (training crops), `evaluate` and `render` (crop a portrait or
a generated video the same way). docs/method.md §1 "Face crop": the detector box expanded by 0.5 of its
size on each side and made square (``crop: box``); ``crop: template`` instead aligns eyes, nose
and mouth corners to a fixed template by a similarity transform (ArcFace's five-point layout,
scaled so that the crop spans ``template_iod`` inter-ocular distances).

Pipeline for a clip (``FaceTracker.track`` then ``clip_transforms``):

1. Full-frame detection (frame downscaled to ``detect_size``) until a face is found; with several
   faces the largest is taken (``Track.faces`` counts them for the log).
2. Tracking: the dlib 68-point predictor runs in the box propagated from the previous frame's
   landmarks (the landmark box mapped to the detector's box convention, calibrated at the last
   detection). Every ``detect_every`` frames the detector re-runs in a window around the tracked
   face to correct drift. A face whose box leaves the frame (``min_visible``), jumps in size, or
   that re-detection no longer finds is lost: the frame has no face and detection restarts; in
   the last case the frames since the previous detection are bisected with the detector to find
   where the face went (the predictor answers even on an empty background).
3. Gaps (``find_segments``, ``interpolate_gaps``), then the crop pose per frame (centre, side,
   roll) from the landmarks, smoothed with a zero-phase Savitzky-Golay filter (``savgol``) or
   fixed for the clip; a crop pose is a similarity map source -> crop (``pose_to_affine``).

Coordinates: pixel centres at integer positions (dlib's and OpenCV's convention); an affine
``M`` (2, 3) maps source pixels to crop pixels, ``crop_xy = M[:, :2] @ src_xy + M[:, 2]``.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import math
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from talk.core import weights
from talk.core.errors import TalkError
from talk.core.params import one_of, rng
from talk.media import landmarks as L

log = logging.getLogger("talk")

# ArcFace's 112 x 112 five-point template (eye A, eye B, nose tip, mouth corner A, B), normalised.
ARCFACE_5 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
) / 112.0

# dlib's detector box relative to the 68-landmark bounding box (centre offset in box units, size
# ratio), mean over the real portraits of the sample set; replaced at every dlib detection.
DEFAULT_CALIBRATION = np.array([-0.03, -0.09, 1.09, 1.11])
# dlib's detector box in ArcFace-normalised coordinates (five points mapped onto ARCFACE_5), mean
# over the sample portraits (std ~0.04): converts keypoint detectors' output into predictor boxes.
DLIB_BOX_IN_ARCFACE = np.array([0.08, 0.21, 0.92, 1.04])
REDETECT_FACE_PX = 100  # px: the tracked face is rescaled to about this size for re-detection (dlib HOG window: 80)
REDETECT_CONTEXT = 2.0  # re-detection window side, in face boxes
MIN_IOU = 0.3  # a re-detection must overlap the tracked box this much to be the same face
MAX_SCALE_JUMP = 1.5  # tracked face box growing or shrinking faster than this per frame = lost


@dataclasses.dataclass(frozen=True)
class FaceConfig:
    """How faces are found, tracked, smoothed and cropped (params.yaml ``crop_align.face``)."""

    detector: str = dataclasses.field(default="dlib", metadata=one_of("dlib", "insightface"))  # face detector backend (dlib HOG, or SCRFD from an insightface pack)
    insightface_root: Path = Path("weights/insightface")  # folder holding models/<pack>/*.onnx (insightface only)
    insightface_pack: str = "buffalo_l"  # insightface model pack; its det_*.onnx (SCRFD) is used
    detect_size: int = dataclasses.field(default=480, metadata=rng(64))  # px, longer side of the frame for full-frame detection
    upsample: int = dataclasses.field(default=0, metadata=rng(0, 2))  # dlib HOG upsampling steps (each finds 2x smaller faces, ~4x slower)
    detect_every: int = dataclasses.field(default=10, metadata=rng(1))  # frames between re-detections; landmarks are tracked in between
    min_face: float = dataclasses.field(default=0.1, metadata=rng(0, 1))  # smallest face kept, fraction of the frame's shorter side
    min_visible: float = dataclasses.field(default=0.6, metadata=rng(0, 1))  # tracked face box less than this fraction inside the frame = lost
    crop: str = dataclasses.field(default="box", metadata=one_of("box", "template"))  # box: DICE-Talk expanded square box; template: similarity to a 5-point template
    box_expand: float = dataclasses.field(default=0.5, metadata=rng(0))  # box: fraction of the face box added on each side (DICE-Talk: 0.5)
    template_iod: float = dataclasses.field(default=4.5, metadata=rng(1))  # template: crop side in inter-ocular distances
    template_center_y: float = dataclasses.field(default=0.5, metadata=rng(0, 1))  # template: height of the eyes-mouth midpoint, fraction of the crop from the top
    crop_motion: str = dataclasses.field(default="smooth", metadata=one_of("smooth", "fixed"))  # smooth: crop follows the face, smoothed; fixed: one crop per clip
    smooth_window: int = dataclasses.field(default=15, metadata=rng(1))  # frames (odd), Savitzky-Golay window of the crop pose; 1 = off
    smooth_landmarks: int = dataclasses.field(default=5, metadata=rng(1))  # frames (odd), Savitzky-Golay window of the saved landmarks; 1 = off
    smooth_order: int = dataclasses.field(default=2, metadata=rng(0, 5))  # polynomial order of both smoothers
    pad: str = dataclasses.field(default="edge", metadata=one_of("edge", "constant"))  # fill outside the frame: edge pixels or black (never mirrored: ghost faces)

    def validate(self) -> None:
        for name in ("smooth_window", "smooth_landmarks"):
            if getattr(self, name) % 2 == 0:
                raise TalkError(f"crop_align.face.{name}: must be odd, got {getattr(self, name)}")


# --------------------------------------------------------------------------------------------
# Detector backends: (H, W, 3) RGB uint8 -> (N, 4) boxes x0, y0, x1, y1 in that image's pixels,
# in dlib's frontal-face box convention (the box the 68-point predictor was trained on)


@functools.cache
def _hog_detector():
    import dlib

    return dlib.get_frontal_face_detector()


@functools.cache
def _shape_predictor(path: Path):
    import dlib

    return dlib.shape_predictor(str(path))


class DlibDetector:
    """dlib's HOG + linear SVM frontal face detector."""

    name = "dlib HOG"

    def __init__(self, upsample: int = 0):
        self._detect = _hog_detector()  # loaded once per process (stateless)
        self.upsample = upsample

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        rects = self._detect(gray, self.upsample)
        return np.array([[r.left(), r.top(), r.right(), r.bottom()] for r in rects], np.float64).reshape(-1, 4)


class ScrfdDetector:
    """SCRFD from a local insightface model pack (e.g. ``<root>/models/buffalo_l/det_10g.onnx``)."""

    name = "insightface SCRFD"

    def __init__(self, root: Path, pack: str, threshold: float = 0.5):
        folder = weights.insightface_pack(root, pack)
        found = sorted(folder.glob("det_*.onnx")) or sorted(folder.glob("*scrfd*.onnx"))
        if not found:
            raise TalkError(f"no SCRFD detector (det_*.onnx) in {folder.resolve()}")
        try:
            import onnxruntime
            from insightface.model_zoo import get_model
        except ImportError:
            raise TalkError("the insightface detector needs: pip install 'talk[insightface]' (insightface, onnxruntime)") from None
        self.model = get_model(str(found[0]), providers=onnxruntime.get_available_providers())
        self.model.prepare(ctx_id=0, det_thresh=threshold)  # ctx_id >= 0 keeps the session's providers

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        # a dynamic-shape model (det_10g) runs at the image's size rounded up to its stride 32
        size = self.model.input_size or (max(32, math.ceil(w / 32) * 32), max(32, math.ceil(h / 32) * 32))
        boxes, kps = self.model.detect(np.ascontiguousarray(rgb[..., ::-1]), input_size=size)  # BGR in
        if kps is None:  # a model without keypoints: its own boxes
            return np.asarray(boxes, np.float64).reshape(-1, 5)[:, :4]
        return box_from_five(np.asarray(kps, np.float64).reshape(-1, 5, 2))  # SCRFD frames faces differently from dlib


def make_detector(cfg: FaceConfig):
    """The configured detector backend (string -> class; TalkError names what is missing)."""
    if cfg.detector == "dlib":
        return DlibDetector(cfg.upsample)
    if cfg.detector == "insightface":
        return ScrfdDetector(cfg.insightface_root, cfg.insightface_pack)
    raise TalkError(f"unknown face detector '{cfg.detector}' (dlib, insightface)")


# --------------------------------------------------------------------------------------------
# Boxes


def landmark_box(lm: np.ndarray) -> np.ndarray:
    """(..., 68, 2) -> (..., 4) bounding box x0, y0, x1, y1 of the landmarks."""
    return np.concatenate([lm.min(-2), lm.max(-2)], -1)


def box_from_five(kps: np.ndarray) -> np.ndarray:
    """Five points (..., 5, 2) (ARCFACE_5 order, e.g. SCRFD's keypoints) -> (..., 4) square box in
    dlib's detector convention: ``DLIB_BOX_IN_ARCFACE`` mapped back through the similarity that
    takes the points onto the ArcFace template."""
    a, b, tx, ty = np.moveaxis(similarity(kps, np.broadcast_to(ARCFACE_5, kps.shape)), -1, 0)
    s2 = a * a + b * b
    x0, y0, x1, y1 = DLIB_BOX_IN_ARCFACE
    ux, uy = (x0 + x1) / 2 - tx, (y0 + y1) / 2 - ty
    cx, cy = (a * ux + b * uy) / s2, (-b * ux + a * uy) / s2  # template centre in source px
    hw, hh = (x1 - x0) / 2 / np.sqrt(s2), (y1 - y0) / 2 / np.sqrt(s2)
    return np.stack([cx - hw, cy - hh, cx + hw, cy + hh], -1)


def calibrate(det_box: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """The detector box relative to the landmark box: (dx, dy, sx, sy) (centre offset, size ratio)."""
    x0, y0, x1, y1 = landmark_box(lm)
    w, h = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
    dx = ((det_box[0] + det_box[2]) / 2 - (x0 + x1) / 2) / w
    dy = ((det_box[1] + det_box[3]) / 2 - (y0 + y1) / 2) / h
    return np.array([dx, dy, (det_box[2] - det_box[0]) / w, (det_box[3] - det_box[1]) / h])


def propagate(lm: np.ndarray, calibration: np.ndarray) -> np.ndarray:
    """Landmarks -> the detector-convention box the predictor expects around them."""
    x0, y0, x1, y1 = landmark_box(lm)
    w, h = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2 + calibration[0] * w, (y0 + y1) / 2 + calibration[1] * h
    hw, hh = calibration[2] * w / 2, calibration[3] * h / 2
    return np.array([cx - hw, cy - hh, cx + hw, cy + hh])


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes (N, 4) against one box (4,)."""
    a = np.atleast_2d(a)
    ix = np.clip(np.minimum(a[:, 2], b[2]) - np.maximum(a[:, 0], b[0]), 0, None)
    iy = np.clip(np.minimum(a[:, 3], b[3]) - np.maximum(a[:, 1], b[1]), 0, None)
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    return inter / np.maximum(area_a + area_b - inter, 1e-9)


def visible_fraction(box: np.ndarray, width: int, height: int) -> float:
    """Fraction of the box (4,) inside the frame."""
    area = max((box[2] - box[0]) * (box[3] - box[1]), 1e-9)
    ix = max(0.0, min(box[2], width - 1) - max(box[0], 0))
    iy = max(0.0, min(box[3], height - 1) - max(box[1], 0))
    return float(ix * iy / area)


# --------------------------------------------------------------------------------------------
# Tracking


@dataclasses.dataclass
class Track:
    """Per-frame tracking result of one clip."""

    landmarks: np.ndarray  # (T, 68, 2) float32, source pixels; NaN where no face
    faces: np.ndarray  # (T,) int16: faces seen by a full-frame detection on that frame; -1 = none ran
    detections: int = 0  # detector runs (full frame + re-detection)

    @property
    def found(self) -> np.ndarray:  # (T,) bool
        return ~np.isnan(self.landmarks[:, 0, 0])

    @property
    def max_faces(self) -> int:
        return int(self.faces.max(initial=0))


class FaceTracker:
    """Detect the largest face, then track its 68 landmarks frame to frame (module docstring)."""

    def __init__(self, cfg: FaceConfig, detector=None):
        import dlib

        self.cfg = cfg
        self.detector = detector if detector is not None else make_detector(cfg)
        self.predictor = _shape_predictor(weights.dlib_model("landmarks_68"))  # loaded once per process
        self._rect = dlib.rectangle

    # -- primitives

    def detect(self, rgb: np.ndarray) -> np.ndarray:
        """Full-frame detection: (N, 4) boxes in source pixels, largest first, small ones dropped."""
        h, w = rgb.shape[:2]
        f = min(1.0, self.cfg.detect_size / max(h, w))
        small = rgb if f == 1.0 else cv2.resize(rgb, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)
        boxes = self.detector(small) / f
        side = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        boxes = boxes[side >= self.cfg.min_face * min(h, w)]
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        return boxes[np.argsort(-area, kind="stable")]

    def redetect(self, rgb: np.ndarray, box: np.ndarray) -> np.ndarray | None:
        """Detection in a window around ``box``; the detection overlapping it most, or None."""
        h, w = rgb.shape[:2]
        side = max(box[2] - box[0], box[3] - box[1])
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        half = side * REDETECT_CONTEXT / 2
        x0, y0 = int(max(0, cx - half)), int(max(0, cy - half))
        x1, y1 = int(min(w, cx + half + 1)), int(min(h, cy + half + 1))
        if x1 - x0 < 8 or y1 - y0 < 8:
            return None
        f = min(1.0, REDETECT_FACE_PX / max(side, 1.0))
        roi = rgb[y0:y1, x0:x1]
        if f < 1.0:
            roi = cv2.resize(roi, (max(1, round((x1 - x0) * f)), max(1, round((y1 - y0) * f))), interpolation=cv2.INTER_AREA)
        boxes = self.detector(np.ascontiguousarray(roi))
        if len(boxes) == 0:
            return None
        fx, fy = roi.shape[1] / (x1 - x0), roi.shape[0] / (y1 - y0)
        boxes = boxes / [fx, fy, fx, fy] + [x0, y0, x0, y0]
        overlap = iou(boxes, box)
        best = int(np.argmax(overlap))
        return boxes[best] if overlap[best] >= MIN_IOU else None

    def predict(self, rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
        """68 landmarks (68, 2) float32 in the box; grey conversion of the box's neighbourhood only."""
        h, w = rgb.shape[:2]
        bw, bh = box[2] - box[0], box[3] - box[1]
        x0, y0 = int(max(0, box[0] - bw / 2)), int(max(0, box[1] - bh / 2))
        x1, y1 = int(min(w, box[2] + bw / 2 + 1)), int(min(h, box[3] + bh / 2 + 1))
        if x1 - x0 < 2 or y1 - y0 < 2:  # box entirely off the frame
            x0, y0, x1, y1 = 0, 0, w, h
        gray = cv2.cvtColor(rgb[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY)
        r = self._rect(*(int(round(v)) for v in (box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0)))
        shape = self.predictor(gray, r)
        return np.array([(p.x + x0, p.y + y0) for p in shape.parts()], np.float32)

    def fit(self, rgb: np.ndarray, det_box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Landmarks from a detector box, and the calibration (detector box vs landmark box)."""
        lm = self.predict(rgb, det_box)
        return lm, calibrate(det_box, lm)

    def _plausible(self, lm: np.ndarray, prev: np.ndarray, width: int, height: int) -> bool:
        box = landmark_box(lm)
        if visible_fraction(box, width, height) < self.cfg.min_visible:
            return False
        side, prev_side = box[2:] - box[:2], landmark_box(prev)
        ratio = float(np.sqrt(np.prod(np.maximum(side, 1)) / np.prod(np.maximum(prev_side[2:] - prev_side[:2], 1))))
        return 1 / MAX_SCALE_JUMP <= ratio <= MAX_SCALE_JUMP

    # -- whole clips

    def track(self, frames: Iterable[np.ndarray]) -> Track:
        """Landmarks of the tracked face in every frame (NaN where there is none).

        When a re-detection no longer finds the tracked face, the frames tracked since the last
        detection are bisected with the detector to find where the face was lost; the frames
        after that point get no face (the predictor always answers, even on background).
        """
        out: list[np.ndarray] = []
        faces: list[int] = []
        prev, cal, since, runs = None, DEFAULT_CALIBRATION, 0, 0
        recent: collections.deque = collections.deque(maxlen=self.cfg.detect_every)  # (t, rgb, box) since the last detection
        for t, rgb in enumerate(frames):
            h, w = rgb.shape[:2]
            lm, n = None, -1
            if prev is None:
                boxes = self.detect(rgb)
                runs += 1
                n = len(boxes)
                if n:
                    lm, cal = self.fit(rgb, boxes[0])
                    since = 0
            else:
                box = propagate(prev, cal)
                since += 1
                if since >= self.cfg.detect_every:
                    runs += 1
                    det = self.redetect(rgb, box)
                    if det is not None:
                        lm, cal = self.fit(rgb, det)
                        since = 0
                    else:
                        runs += self._cut_lost(recent, out)
                else:
                    lm = self.predict(rgb, box)
                if lm is not None and not self._plausible(lm, prev, w, h):
                    lm = None
            if lm is None or since == 0:
                recent.clear()
            else:
                recent.append((t, rgb, propagate(lm, cal)))
            out.append(lm if lm is not None else np.full((68, 2), np.nan, np.float32))
            faces.append(n)
            prev = lm
        if not out:
            raise TalkError("no frames to track")
        return Track(np.stack(out), np.array(faces, np.int16), runs)

    def _cut_lost(self, recent: collections.deque, out: list[np.ndarray]) -> int:
        """Bisect ``recent`` for the last frame where the detector still finds the tracked face;
        clear the landmarks after it. Returns the number of detector runs."""
        lo, hi, runs = -1, len(recent), 0  # lo: known found (the last detection), hi: known lost
        while hi - lo > 1:
            mid = (lo + hi) // 2
            _, rgb, box = recent[mid]
            runs += 1
            if self.redetect(rgb, box) is not None:
                lo = mid
            else:
                hi = mid
        for t, _, _ in list(recent)[hi:]:
            out[t] = np.full((68, 2), np.nan, np.float32)
        return runs


# --------------------------------------------------------------------------------------------
# Gaps and smoothing


def find_segments(found: np.ndarray, max_gap: int) -> list[tuple[int, int]]:
    """Runs of frames [start, stop) with a face, bridging gaps of at most ``max_gap`` frames.

    Frames before the first and after the last face are left out.
    """
    idx = np.flatnonzero(found)
    if len(idx) == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) - 1 > max_gap)
    starts = np.concatenate([[idx[0]], idx[breaks + 1]])
    stops = np.concatenate([idx[breaks] + 1, [idx[-1] + 1]])
    return [(int(a), int(b)) for a, b in zip(starts, stops)]


def interpolate_gaps(x: np.ndarray) -> np.ndarray:
    """Fill NaN frames of (T, ...) linearly between the nearest frames with values (held at the ends)."""
    x = np.array(x, np.float64)
    flat = x.reshape(len(x), -1)
    ok = ~np.isnan(flat[:, 0])
    if ok.all():
        return x
    if not ok.any():
        raise TalkError("no frame with a face to interpolate from")
    t = np.arange(len(x))
    for d in range(flat.shape[1]):
        flat[~ok, d] = np.interp(t[~ok], t[ok], flat[ok, d])
    return flat.reshape(x.shape)


def savgol(x: np.ndarray, window: int, order: int = 2) -> np.ndarray:
    """Zero-phase Savitzky-Golay smoothing of (T, ...) along time.

    Each frame becomes the value at its position of a degree-``order`` polynomial least-squares
    fitted to the ``window`` frames centred on it; the first and last ``window // 2`` frames take
    their values from the fit to the first / last full window (no padding, no phase lag).
    """
    x = np.asarray(x, np.float64)
    T = len(x)
    w = min(window, T if T % 2 else T - 1)
    if w < 3:
        return x.copy()
    p = min(order, w - 1)
    m = w // 2
    A = np.vander(np.arange(-m, m + 1, dtype=np.float64), p + 1, increasing=True)  # (w, p+1)
    H = A @ np.linalg.pinv(A)  # (w, w): row j = weights of the fitted value at window position j
    flat = x.reshape(T, -1)  # (T, D)
    out = np.empty_like(flat)
    windows = np.lib.stride_tricks.sliding_window_view(flat, w, axis=0)  # (T - w + 1, D, w)
    out[m : T - m] = windows @ H[m]
    out[:m] = H[:m] @ flat[:w]
    out[T - m :] = H[m + 1 :] @ flat[T - w :]
    return out.reshape(x.shape)


# --------------------------------------------------------------------------------------------
# Crop poses and transforms. A pose (cx, cy, side, roll): the source point at the crop centre,
# the source length of the crop side, and the source-image angle (rad) of the crop's x axis.


def five_points(lm: np.ndarray) -> np.ndarray:
    """(..., 68, 2) -> (..., 5, 2): eye centres, nose tip, mouth corners (ARCFACE_5 order)."""
    eye_a, eye_b = L.eye_centres(lm)  # image left (the subject's right), image right
    corner_a, corner_b = L.MOUTH_CORNERS
    return np.stack([eye_a, eye_b, lm[..., L.NOSE_TIP, :], lm[..., corner_a, :], lm[..., corner_b, :]], -2)


def template(cfg: FaceConfig) -> np.ndarray:
    """(5, 2) template points in normalised crop coordinates [0, 1]."""
    t = ARCFACE_5
    iod = np.linalg.norm(t[1] - t[0])
    mid = (t[:2].mean(0) + t[3:].mean(0)) / 2  # eyes-mouth midpoint
    return (t - mid) / (iod * cfg.template_iod) + np.array([0.5, cfg.template_center_y])


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (a, b, tx, ty), ``dst ~ [[a, -b], [b, a]] @ src + t``; (..., N, 2) -> (..., 4)."""
    ms, md = src.mean(-2, keepdims=True), dst.mean(-2, keepdims=True)
    s, d = src - ms, dst - md
    norm = (s**2).sum((-1, -2))
    a = (s * d).sum((-1, -2)) / norm
    b = (s[..., 0] * d[..., 1] - s[..., 1] * d[..., 0]).sum(-1) / norm
    tx = md[..., 0, 0] - (a * ms[..., 0, 0] - b * ms[..., 0, 1])
    ty = md[..., 0, 1] - (b * ms[..., 0, 0] + a * ms[..., 0, 1])
    return np.stack([a, b, tx, ty], -1)


def landmark_poses(lm: np.ndarray, cfg: FaceConfig) -> np.ndarray:
    """(T, 68, 2) landmarks -> (T, 4) crop poses (cx, cy, side, roll), per frame, unsmoothed."""
    lm = np.asarray(lm, np.float64)
    if cfg.crop == "box":
        box = landmark_box(lm)  # (T, 4)
        side = np.maximum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]) * (1 + 2 * cfg.box_expand)
        return np.stack([(box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2, side, np.zeros(len(lm))], -1)
    # template: similarity source -> normalised crop, inverted into a pose
    a, b, tx, ty = np.moveaxis(similarity(five_points(lm), np.broadcast_to(template(cfg), (len(lm), 5, 2))), -1, 0)
    scale = np.hypot(a, b)  # normalised crop units per source pixel
    roll = np.arctan2(-b, a)  # source angle of the crop's x axis
    # source point shown at the crop centre (0.5, 0.5): invert [[a, -b], [b, a]] p + t = c
    ux, uy = 0.5 - tx, 0.5 - ty
    cx, cy = (a * ux + b * uy) / scale**2, (-b * ux + a * uy) / scale**2
    return np.stack([cx, cy, 1.0 / scale, np.unwrap(roll)], -1)


def smooth_poses(poses: np.ndarray, cfg: FaceConfig) -> np.ndarray:
    """Savitzky-Golay smoothing of (T, 4) poses, or one fixed pose for the clip (``crop_motion``)."""
    if cfg.crop_motion == "fixed":
        fixed = np.median(poses, 0)
        fixed[2] = poses[:, 2].max()  # the largest crop, so the face never leaves it
        return np.broadcast_to(fixed, poses.shape).copy()
    return savgol(poses, cfg.smooth_window, cfg.smooth_order)


def pose_to_affine(poses: np.ndarray, size: int) -> np.ndarray:
    """(..., 4) poses -> (..., 2, 3) affine source px -> crop px (crop edges at -0.5 and size - 0.5)."""
    cx, cy, side, roll = np.moveaxis(np.asarray(poses, np.float64), -1, 0)
    s = size / side
    c, sn = np.cos(roll) * s, np.sin(roll) * s
    mid = (size - 1) / 2
    row0 = np.stack([c, sn, mid - c * cx - sn * cy], -1)
    row1 = np.stack([-sn, c, mid + sn * cx - c * cy], -1)
    return np.stack([row0, row1], -2)


def apply_affine(M: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Map points (..., N, 2) by affines (..., 2, 3)."""
    return pts @ np.swapaxes(M[..., :2], -1, -2) + M[..., None, :, 2]


def clip_transforms(lm: np.ndarray, cfg: FaceConfig, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Gap-free (T, 68, 2) source landmarks -> (T, 2, 3) float32 transforms and (T, 68, 2)
    float32 landmarks in crop pixels (lightly smoothed, ``smooth_landmarks``)."""
    M = pose_to_affine(smooth_poses(landmark_poses(lm, cfg), cfg), size)
    crop_lm = apply_affine(M, savgol(lm, cfg.smooth_landmarks, cfg.smooth_order))
    return M.astype(np.float32), crop_lm.astype(np.float32)


def warp(frame: np.ndarray, M: np.ndarray, size: int, pad: str = "edge") -> np.ndarray:
    """The crop (size, size, 3) uint8 of ``frame`` under ``M``.

    When the crop shrinks the source by more than 2x, the source region under the crop is first
    halved (exact 2x2 averages, ``cv2.INTER_AREA``) until the remaining bilinear warp shrinks by
    at most 2x, so it does not alias.
    """
    M = np.asarray(M, np.float64)
    border = cv2.BORDER_REPLICATE if pad == "edge" else cv2.BORDER_CONSTANT
    scale = math.sqrt(abs(np.linalg.det(M[:, :2])))
    if scale < 0.5:
        h, w = frame.shape[:2]
        corners = apply_affine(cv2.invertAffineTransform(M), np.array([[-0.5, -0.5], [size, -0.5], [-0.5, size], [size, size]]))
        x0, y0 = (np.floor(corners.min(0)).astype(int) - 2).clip(0)
        x1, y1 = np.ceil(corners.max(0)).astype(int) + 2
        x1, y1 = min(x1, w), min(y1, h)
        if x1 - x0 >= 4 and y1 - y0 >= 4:  # else the crop lies off the frame: the border fills it
            img = frame[y0:y1, x0:x1]
            M = M @ np.array([[1.0, 0, x0], [0, 1, y0], [0, 0, 1]])  # region px -> crop px
            while scale < 0.5 and min(img.shape[:2]) >= 4:
                hh, ww = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
                img = cv2.resize(img[:hh, :ww], (ww // 2, hh // 2), interpolation=cv2.INTER_AREA)
                M = M @ np.array([[2.0, 0, 0.5], [0, 2, 0.5], [0, 0, 1]])  # half px q -> p = 2q + 0.5
                scale *= 2
            frame = img
    return cv2.warpAffine(frame, M, (size, size), flags=cv2.INTER_LINEAR, borderMode=border, borderValue=(0, 0, 0))


# --------------------------------------------------------------------------------------------
# One-call helpers for other stages (evaluate, render)


@dataclasses.dataclass
class Aligned:
    crops: np.ndarray  # (T, size, size, 3) uint8
    landmarks: np.ndarray  # (T, 68, 2) float32, crop pixels
    transforms: np.ndarray  # (T, 2, 3) float32, source px -> crop px
    found: np.ndarray  # (T,) bool: a face was tracked in that frame (others interpolated)


class Aligner:
    """Crop portraits and videos the way `crop_align` does: ``Aligner.from_params(params)``."""

    def __init__(self, cfg: FaceConfig, size: int, tracker: FaceTracker | None = None):
        self.cfg, self.size = cfg, size
        self.tracker = tracker or FaceTracker(cfg)

    @classmethod
    def from_params(cls, params) -> Aligner:
        return cls(params.crop_align.face, params.model.image_size)

    def align_image(self, img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One RGB portrait -> (crop (S, S, 3) uint8, landmarks (68, 2) crop px, transform (2, 3)).

        The largest face is used (logged when there are several); TalkError when there is none.
        """
        img = np.ascontiguousarray(img, np.uint8)
        if img.ndim != 3 or img.shape[2] != 3:
            raise TalkError(f"expected an RGB image (H, W, 3), got shape {img.shape}")
        boxes = self.tracker.detect(img)
        if len(boxes) == 0:
            raise TalkError("no face found in the image")
        if len(boxes) > 1:
            log.info("%d faces in the image: using the largest", len(boxes))
        lm, _ = self.tracker.fit(img, boxes[0])
        M = pose_to_affine(landmark_poses(lm[None], self.cfg)[0], self.size)
        return warp(img, M, self.size, self.cfg.pad), apply_affine(M, lm).astype(np.float32), M.astype(np.float32)

    def align_video(self, frames: Iterable[np.ndarray] | np.ndarray) -> Aligned:
        """RGB frames -> smoothed crops of the tracked face; frames without a face are interpolated."""
        frames = list(frames)
        track = self.tracker.track(frames)
        if not track.found.any():
            raise TalkError("no face found in the video")
        if track.max_faces > 1:
            log.info("up to %d faces in view: tracking the largest", track.max_faces)
        M, lm = clip_transforms(interpolate_gaps(track.landmarks), self.cfg, self.size)
        crops = np.stack([warp(f, m, self.size, self.cfg.pad) for f, m in zip(frames, M)])
        return Aligned(crops, lm, M, track.found)
