"""Tiny crops whose mouths follow a per-clip random "speech" signal, and Whisper-like features
that carry the same signal, for the lip-sync expert's tests (tests/test_sync.py).

Clip i's mouth opening at frame t is s_i(t) (a random step signal, new value every 2-4 frames);
its features at audio frames 2t, 2t+1 are s_i(t) * v + noise (v one random direction), so a mouth
window and an audio window agree exactly when they are taken at the same time.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from talk.media.io import write_video

from latents_fixture import MANIFEST_COLUMNS  # noqa: E402  (tests/ is on sys.path)

TINY_EXPERT = {"frames": 5, "audio_window": 10, "audio_layers": 2, "audio_dim": 8, "mouth_size": 16, "width": 8,
               "emb_dim": 16}


def speech_signal(n: int, seed: int) -> np.ndarray:
    """(n,) in [0, 1]: a random step signal (new level every 2-4 frames), a crude syllable rhythm."""
    g = np.random.default_rng([seed, 11])
    out, t = np.zeros(n), 0
    while t < n:
        d = int(g.integers(2, 5))
        out[t:t + d] = g.uniform(0, 1)
        t += d
    return out


def mouth_frames(signal: np.ndarray, size: int, speaker: int) -> np.ndarray:
    """(T, size, size, 3) uint8 blob faces whose mouth opening is ``signal``."""
    g = np.random.default_rng([speaker, 7])
    yy, xx = np.mgrid[0:size, 0:size] / size
    skin = g.uniform(0.5, 0.9, 3)
    out = []
    for s in signal:
        img = np.stack([0.3 + 0.4 * xx, 0.35 + 0.3 * yy, 0.5 - 0.2 * xx], -1)
        img[((xx - 0.5) / 0.33) ** 2 + ((yy - 0.5) / 0.4) ** 2 < 1] = skin
        mouth = ((xx - 0.5) / 0.15) ** 2 + ((yy - 0.72) / (0.02 + 0.14 * s)) ** 2 < 1
        img[mouth] = (0.35, 0.05, 0.05)
        out.append(np.clip(img * 255, 0, 255).astype(np.uint8))
    return np.stack(out)


def signal_features(signal: np.ndarray, layers: int, dim: int, seed: int) -> np.ndarray:
    """(2T, layers, dim) float16: s(t) * v + noise at audio frames 2t and 2t + 1."""
    v = np.random.default_rng(5).normal(0, 1, (layers, dim))
    noise = np.random.default_rng([seed, 3]).normal(0, 0.2, (2 * len(signal), layers, dim))
    return (np.repeat(signal, 2)[:, None, None] * 2 * v[None] + noise).astype(np.float16)


def make_sync_crops(root: Path, n_train: int = 8, n_val: int = 3, n_frames: int = 40, size: int = 32,
                    layers: int = 2, dim: int = 8) -> tuple[Path, Path]:
    """``root/crops`` (frames.mp4, landmarks.npy, manifest.csv) + ``root/audio_features``."""
    crops, feats = Path(root) / "crops", Path(root) / "audio_features"
    crops.mkdir(parents=True, exist_ok=True)
    feats.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_train + n_val):
        clip_id, speaker = f"c{i:02d}", f"S{i % 3}"
        d = crops / clip_id
        d.mkdir(exist_ok=True)
        s = speech_signal(n_frames, i)
        write_video(d / "frames.mp4", mouth_frames(s, size, i % 3), crf=0, pix_fmt="yuv444p")
        np.save(d / "landmarks.npy", np.zeros((n_frames, 68, 2), np.float32))
        np.save(feats / f"{clip_id}.npy", signal_features(s, layers, dim, i))
        rows.append({
            "clip_id": clip_id, "speaker": speaker, "emotion": "neutral", "level": 1, "video_path": "",
            "audio_path": "", "duration": n_frames / 25, "fps": 25.0, "width": size, "height": size,
            "has_audio": True, "split": "train" if i < n_train else "val", "subset": "mead", "gt_path": "",
            "n_frames": n_frames, "crop_dir": str(d),
        })
    pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)).to_csv(crops / "manifest.csv", index=False)
    (feats / "meta.json").write_text(json.dumps({"rate_hz": 50, "video_fps": 25, "L": layers, "D": dim}))
    return crops, feats
