"""Fixtures of the evaluate tests: real portraits animated into tiny crop_align-shaped clips.

The crops are two real portraits (tests/fixtures/eval_face_*.png, see eval_README.md) animated
frame by frame: a mouth-opening warp that follows a tone-burst audio envelope, a small head sway
and an expression warp (happy / surprised) that ramps in over the clip, so the first frame is
neutral. Used by tests/test_metrics.py and tests/test_report.py.
"""

from __future__ import annotations

import hashlib
import types
from pathlib import Path

import numpy as np
import pandas as pd

from talk.core import params as P
from talk.evaluation.config import Config
from talk.evaluation.metrics.face import FaceAnalyzer
from talk.media import io as media
from talk.media.landmarks import interocular

FIXTURES = Path(__file__).parent / "fixtures"


def face_image(name: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(FIXTURES / f"eval_face_{name}.png").convert("RGB"))


def open_mouth(img: np.ndarray, lm: np.ndarray, g: float) -> np.ndarray:
    """Pull the lower lip and chin down by ``g`` px with a smooth displacement field."""
    import cv2

    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    mid = (lm[62, 1] + lm[66, 1]) / 2
    ramp = np.clip((yy - (mid - 1.5)) / 3.0, 0, 1)
    decay = np.clip(1 - (yy - lm[8, 1]) / (0.15 * h), 0, 1)
    horiz = np.exp(-((xx - lm[48:68, 0].mean()) / (0.9 * (lm[54, 0] - lm[48, 0]))) ** 2)
    dy = (float(g) * ramp * decay * horiz).astype(np.float32)
    return cv2.remap(img, xx, yy - dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


EMOTIONS = ("neutral", "happy", "surprised")
# Expression warps as (landmark indices, displacement in inter-ocular distances): docs/findings.md's
# displacements at about level 2.
EXPRESSIONS = {
    "neutral": [],
    "happy": [([48], (-0.16, -0.16)), ([54], (0.16, -0.16))],
    "surprised": [(list(range(17, 27)), (0.0, -0.24)), ([37, 38, 43, 44], (0.0, -0.08))],
}


def expression(img: np.ndarray, lm: np.ndarray, emotion: str, strength: float) -> np.ndarray:
    """Move the listed landmarks by their displacement with a Gaussian falloff (0.2 IOD)."""
    import cv2

    moves = EXPRESSIONS[emotion]
    if not moves or strength == 0:
        return img
    iod = float(interocular(lm[None])[0])
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dx = np.zeros((h, w), np.float32)
    dy = np.zeros((h, w), np.float32)
    sigma = 0.2 * iod
    for idx, (mx, my) in moves:
        for i in idx:
            wgt = np.exp(-((xx - lm[i, 0]) ** 2 + (yy - lm[i, 1]) ** 2) / (2 * sigma**2))
            dx += strength * mx * iod * wgt
            dy += strength * my * iod * wgt
    return cv2.remap(img, xx - dx, yy - dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def make_clip(face: np.ndarray, lm: np.ndarray, emotion: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames (n, 128, 128, 3) and 16 kHz audio (n * 640,) whose loudness drives the mouth."""
    import cv2

    rng = np.random.default_rng(seed)
    env = np.zeros(n)
    t = 1
    while t < n:  # syllables: 2-4 frames loud, 1-3 frames silent
        k = int(rng.integers(2, 5))
        env[t:t + k] = rng.uniform(0.5, 1.0)
        t += k + int(rng.integers(1, 4))
    frames = []
    for i in range(n):
        img = expression(face, lm, emotion, min(1.0, i / max(1, n // 2)))
        img = open_mouth(img, lm, 7.0 * env[i])
        m = np.float32([[1, 0, 1.0 * np.sin(i / 3)], [0, 1, 0.5 * np.cos(i / 4)]])
        frames.append(cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), borderMode=cv2.BORDER_REPLICATE))
    ts = np.arange(n * 640) / 16000
    audio = 0.3 * np.repeat(env, 640) * np.sin(2 * np.pi * 220 * ts) + rng.normal(0, 1e-3, n * 640)
    return np.stack(frames), audio.astype(np.float32)


def make_crops(root: Path, n_train: int = 12, n_test: int = 20) -> Path:
    """A crop_align-shaped folder: manifest.csv + <clip>/frames.mp4, audio.wav, landmarks.npy."""
    fa = FaceAnalyzer(descriptors=False)
    rows = []
    for s, name in enumerate(("a", "b")):
        face = face_image(name)
        lm = fa.landmarks(face, fa.detect(face))
        speaker = f"EVAL{name.upper()}"
        for e, emotion in enumerate(EMOTIONS):
            for split, n in (("train", n_train), ("test", n_test)):
                clip_id = f"{speaker}_{emotion}_1_{split}"
                frames, audio = make_clip(face, lm, emotion, n, seed=100 * s + 10 * e + (split == "test"))
                folder = root / clip_id
                folder.mkdir(parents=True)
                media.write_video(folder / "frames.mp4", frames, pix_fmt="yuv444p", crf=12)
                media.write_wav(folder / "audio.wav", audio)
                np.save(folder / "landmarks.npy", np.zeros((n, 68, 2), np.float32))
                rows.append({"clip_id": clip_id, "speaker": speaker, "emotion": emotion, "level": 1,
                             "split": split, "subset": "mead", "n_frames": n, "crop_dir": str(folder)})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


def make_params(crops: Path, out: Path, prior: Path | None = None, vae: Path | None = None, **kw) -> P.Params:
    """Params of a run scoring ``crops`` into ``out``: every clip and frame, each rendered from its
    own first frame unless ``kw`` says otherwise; ``prior``: a folder holding embeddings.png;
    ``vae``: a VAE artefact for the appearance metrics (None: they are skipped)."""
    kw = {"max_clips": 0, "max_frames": 0, "reference": "first_frame", **kw}
    from talk.stages import render

    missing = out.parent / "no-artefacts"  # the model row needs trained artefacts; tests pass render_fn
    paths = P.Paths(crops=crops, evaluate=out, vae=vae or missing / "vae", prior=prior or missing / "prior",
                    finetune_disc=missing / "finetune_disc", diffusion=missing / "diffusion", sync=missing / "sync")
    sections = {"base": P.Base(), "paths": paths, "model": P.Model(), "evaluate": Config(**kw), "render": render.Config()}
    return P.Params(source=Path("test-params.yaml"), sections=types.MappingProxyType(sections))


def make_vae(folder: Path) -> Path:
    """A tiny untrained VAE artefact (seeded): the appearance metrics' round trip runs through it."""
    import torch

    from talk.artifacts.vae import save_vae
    from talk.models.vae import VaeConfig, build_vae

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        save_vae(build_vae(VaeConfig(block_out_channels=(8, 8), norm_num_groups=4, latent_channels=4), 128), folder)
    return folder


def ceiling_renderer(crops: Path):
    """A render_fn returning the real clip whose first frame it is given (the ceiling); its frames
    cycled when the audio is longer than the clip (the long render)."""
    table = {}
    for folder in crops.iterdir():
        if (folder / "frames.mp4").is_file():
            frames = media.read_video(folder / "frames.mp4")
            table[hashlib.sha1(frames[0].tobytes()).hexdigest()] = frames

    def render(ref, audio, emotion, level):
        frames = table[hashlib.sha1(ref.tobytes()).hexdigest()]
        n = len(audio) // 640
        return frames[:n] if n <= len(frames) else np.resize(frames, (n, *frames.shape[1:]))

    return render
