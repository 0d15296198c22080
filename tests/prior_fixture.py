"""Synthetic crops + Whisper-like features whose emotion is readable from landmarks and audio.

Used by tests/test_prior.py (tiny) and benchmarks/pretrain_prior.py (default-profile size).
Each speaker has their own face shape, size, position and voice offset (identity); each emotion
displaces fixed landmarks and shifts the audio features, scaled by the intensity level; speech
opens the mouth and drives part of the audio (shared by all). Unlabelled "wild" clips have an
emotion too but no label.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

EMOTIONS = ("neutral", "angry", "contempt", "disgusted", "fear", "happy", "sad", "surprised")


def base_face() -> np.ndarray:
    """A crude frontal dlib-68 layout in IOD units, eyes at (-0.5, 0) and (0.5, 0)."""
    p = np.zeros((68, 2))
    t = np.linspace(-1, 1, 17)
    p[0:17] = np.stack([t, 0.1 + 1.5 * np.sqrt(1 - t**2)], 1)  # jaw
    p[17:22] = np.stack([np.linspace(-0.85, -0.2, 5), -0.35 - 0.05 * np.sin(np.linspace(0, np.pi, 5))], 1)
    p[22:27] = np.stack([np.linspace(0.2, 0.85, 5), -0.35 - 0.05 * np.sin(np.linspace(0, np.pi, 5))], 1)
    p[27:31] = np.stack([np.zeros(4), np.linspace(0.05, 0.6, 4)], 1)
    p[31:36] = np.stack([np.linspace(-0.2, 0.2, 5), np.full(5, 0.7)], 1)
    a = np.linspace(0, 2 * np.pi, 7)[:-1]
    p[36:42] = np.stack([-0.5 + 0.2 * np.cos(a), 0.08 * np.sin(a)], 1)
    p[42:48] = np.stack([0.5 + 0.2 * np.cos(a), 0.08 * np.sin(a)], 1)
    a = np.linspace(0, 2 * np.pi, 13)[:-1]
    p[48:60] = np.stack([0.45 * np.cos(a), 1.05 + 0.15 * np.sin(a)], 1)
    a = np.linspace(0, 2 * np.pi, 9)[:-1]
    p[60:68] = np.stack([0.3 * np.cos(a), 1.05 + 0.05 * np.sin(a)], 1)
    return p


def make_prior_fixture(
    root: Path,
    speakers: dict[str, str],
    emotions: tuple[str, ...] = ("neutral", "happy", "sad"),
    clips_per: int = 2,
    levels: tuple[int, ...] = (1,),
    n_frames: int = 40,
    layers: int = 2,
    dim: int = 16,
    wild: int = 0,
    seed: int = 0,
    strength: float = 1.0,
) -> tuple[Path, Path]:
    """Write ``root/crops`` (manifest.csv + <clip>/landmarks.npy) and ``root/features``.

    ``speakers`` maps speaker -> split. Returns (crops dir, features dir).
    """
    rng = np.random.default_rng(seed)
    crops, feats = Path(root) / "crops", Path(root) / "features"
    crops.mkdir(parents=True, exist_ok=True)
    feats.mkdir(parents=True, exist_ok=True)
    face = base_face()
    emo_lm = {e: rng.normal(0, 0.06, (68, 2)) * (rng.random((68, 1)) < 0.4) for e in EMOTIONS}
    emo_lm["neutral"] = np.zeros((68, 2))
    emo_au = {e: rng.normal(0, 1.0, dim) for e in EMOTIONS}
    emo_au["neutral"] = np.zeros(dim)
    speech_au = rng.normal(0, 1.0, dim)
    mouth = np.zeros((68, 2))
    mouth[[57, 58, 56, 65, 66, 67], 1] = 0.3
    mouth[8, 1] = 0.2
    layer_mix = [(rng.normal(0, 1, (dim, dim)) / np.sqrt(dim) + np.eye(dim)).astype(np.float32) for _ in range(layers)]
    rows = []

    def clip(clip_id: str, spk: str, split: str, emo: str, level: int, label: bool, ident: dict) -> None:
        t = np.arange(n_frames) / 25.0
        env = np.clip(np.sin(2 * np.pi * rng.uniform(2, 5) * t + rng.uniform(0, 6)), 0, None)  # (T,)
        k = strength * (0.5 + 0.5 * level)
        shape = face + ident["shape"] + k * emo_lm[emo]  # (68, 2)
        lm = shape[None] + env[:, None, None] * mouth[None] + rng.normal(0, 0.01, (n_frames, 68, 2))
        ang = ident["roll"] + rng.normal(0, 0.02)
        R = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
        px = lm @ R.T * ident["iod"] + ident["centre"]  # crop pixels
        d = crops / clip_id
        d.mkdir(exist_ok=True)
        np.save(d / "landmarks.npy", px.astype(np.float32))
        env2 = np.repeat(env, 2)  # 50 Hz
        base = env2[:, None] * speech_au + strength * 0.5 * level * emo_au[emo] + ident["voice"]
        base = base + rng.normal(0, 0.5, (2 * n_frames, dim))
        au = np.stack([base.astype(np.float32) @ m for m in layer_mix], 1)  # (2T, L, D)
        np.save(feats / f"{clip_id}.npy", au.astype(np.float16))
        rows.append({"clip_id": clip_id, "speaker": spk, "emotion": emo if label else "",
                     "level": level if label else 0, "split": split, "n_frames": n_frames, "crop_dir": str(d)})

    for spk, split in speakers.items():
        ident = {"shape": rng.normal(0, 0.05, (68, 2)), "iod": rng.uniform(25, 45),
                 "centre": rng.uniform(50, 80, 2), "roll": rng.normal(0, 0.05), "voice": rng.normal(0, 1.0, dim)}
        for emo in emotions:
            for level in (levels if emo != "neutral" else (1,)):
                for n in range(clips_per):
                    clip(f"{spk}_{emo}_{level}_{n:03d}", spk, split, emo, level, True, ident)
        for n in range(wild):
            clip(f"wild_{spk}_{n:03d}", f"wild_{spk}", split, str(rng.choice(emotions)), 1, False, {
                **ident, "shape": rng.normal(0, 0.05, (68, 2)), "voice": rng.normal(0, 1.0, dim)})
    pd.DataFrame(rows).to_csv(crops / "manifest.csv", index=False)
    (feats / "meta.json").write_text(json.dumps({"model": "synthetic", "rate_hz": 50, "video_fps": 25,
                                                 "audio_frames_per_video_frame": 2, "L": layers, "D": dim}))
    return crops, feats
