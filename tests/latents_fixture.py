"""Tiny crops + Whisper-like features (docs/pipeline.md formats) and synthetic latent caches.

Used by tests/test_latents.py and benchmarks/data_reader.py. Frames are random but structured:
each speaker has a face-like blob (skin tone, position, size) on a smooth background; a mouth
opens and closes over time, so neighbouring frames are similar and clips differ.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from talk.data import latent_cache as lc
from talk.media.io import write_video

MANIFEST_COLUMNS = (
    "clip_id", "speaker", "emotion", "level", "video_path", "audio_path", "duration", "fps", "width",
    "height", "has_audio", "split", "subset", "gt_path", "n_frames", "crop_dir",
)


def face_frames(n_frames: int, size: int, speaker: int, clip: int) -> np.ndarray:
    """(T, size, size, 3) uint8: a speaker-specific blob face with a moving mouth."""
    g = np.random.default_rng([speaker, 7])
    yy, xx = np.mgrid[0:size, 0:size] / size  # (S, S) in [0, 1)
    bg = np.stack([0.3 + 0.4 * xx, 0.35 + 0.3 * yy, 0.5 - 0.2 * xx], -1)  # smooth background
    skin = g.uniform(0.4, 0.9, 3)
    cx, cy, r = 0.5 + g.uniform(-0.05, 0.05), 0.5 + g.uniform(-0.05, 0.05), g.uniform(0.28, 0.36)
    noise = np.random.default_rng([speaker, clip]).normal(0, 0.02, (size, size, 3))
    out = []
    for t in range(n_frames):
        img = bg.copy()
        face = ((xx - cx) / r) ** 2 + ((yy - cy) / (1.2 * r)) ** 2 < 1
        img[face] = skin
        for ex in (-0.35, 0.35):  # eyes
            eye = ((xx - cx - ex * r) / (0.12 * r)) ** 2 + ((yy - cy + 0.3 * r) / (0.08 * r)) ** 2 < 1
            img[eye] = (0.1, 0.1, 0.15)
        open_ = 0.03 + 0.1 * (0.5 + 0.5 * np.sin(0.9 * t + clip))  # mouth opening, fraction of r
        mouth = ((xx - cx) / (0.35 * r)) ** 2 + ((yy - cy - 0.5 * r) / (open_ * r + 1e-3)) ** 2 < 1
        img[mouth] = (0.5, 0.1, 0.1)
        out.append(np.clip((img + noise) * 255, 0, 255).astype(np.uint8))
    return np.stack(out)


def make_crops(
    root: Path,
    clips: list[tuple[str, str, str, int, str]],
    n_frames: int = 12,
    size: int = 32,
    layers: int = 2,
    dim: int = 8,
    audio_frames_delta: int = 0,
) -> tuple[Path, Path]:
    """Write ``root/crops`` (frames.mp4 yuv444p, landmarks.npy; no audio.wav) + ``root/audio_features``.

    ``clips``: (clip_id, speaker, emotion, level, split). Feature row j of a clip holds j in
    every entry of its first layer, so tests can read which audio frames a window took.
    Returns (crops dir, audio features dir).
    """
    crops, feats = Path(root) / "crops", Path(root) / "audio_features"
    crops.mkdir(parents=True, exist_ok=True)
    feats.mkdir(parents=True, exist_ok=True)
    speakers = sorted({c[1] for c in clips})
    rows = []
    for i, (clip_id, speaker, emotion, level, split) in enumerate(clips):
        d = crops / clip_id
        d.mkdir(exist_ok=True)
        frames = face_frames(n_frames, size, speakers.index(speaker), i)
        write_video(d / "frames.mp4", frames, crf=0, pix_fmt="yuv444p")
        np.save(d / "landmarks.npy", np.zeros((n_frames, 68, 2), np.float32))
        a = np.random.default_rng(i).normal(0, 1, (2 * n_frames + audio_frames_delta, layers, dim))
        a[:, 0, :] = np.arange(len(a))[:, None]
        np.save(feats / f"{clip_id}.npy", a.astype(np.float16))
        rows.append({
            "clip_id": clip_id, "speaker": speaker, "emotion": emotion, "level": level,
            "video_path": f"raw/{clip_id}.mp4", "audio_path": f"raw/{clip_id}.mp4", "duration": n_frames / 25,
            "fps": 25.0, "width": size, "height": size, "has_audio": True, "split": split, "subset": "mead",
            "gt_path": "", "n_frames": n_frames, "crop_dir": str(d),
        })
    pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)).to_csv(crops / "manifest.csv", index=False)
    (feats / "meta.json").write_text(json.dumps({"rate_hz": 50, "video_fps": 25, "audio_frames_per_video_frame": 2,
                                                "L": layers, "D": dim}))
    return crops, feats


def make_manifest_only(crops: Path, clips: dict[str, int], speakers: int = 4) -> None:
    """A crop manifest without media (for caches written directly by ``make_synthetic_cache``)."""
    rows = []
    for i, (clip_id, n) in enumerate(clips.items()):
        rows.append({
            "clip_id": clip_id, "speaker": f"S{i % speakers}", "emotion": ("neutral", "happy", "")[i % 3],
            "level": (1, 2, 0)[i % 3], "video_path": "", "audio_path": "", "duration": n / 25, "fps": 25.0,
            "width": 0, "height": 0, "has_audio": True, "split": "train", "subset": "mead", "gt_path": "",
            "n_frames": n, "crop_dir": str(crops / clip_id),
        })
    Path(crops).mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)).to_csv(Path(crops) / "manifest.csv", index=False)


def make_synthetic_cache(
    path: Path,
    clips: dict[str, int],
    shape: tuple[int, int, int] = (4, 8, 8),
    std: float = 0.0,
    scaling_factor: float = 0.5,
    identity: str = "synthetic",
) -> None:
    """A latent cache whose frame t of clip i has mean 100 * i + t everywhere (exact in fp16 for
    up to 20 clips of < 100 frames) and std ``std``."""
    meta = lc.make_meta(identity, {"synthetic": True}, scaling_factor, shape, shape[1] * 4)
    w = lc.CacheWriter(path, meta, map_size=1 << 22)
    items = []
    for i, (clip_id, n) in enumerate(clips.items()):
        mean = np.broadcast_to((100.0 * i + np.arange(n, dtype=np.float32))[:, None, None, None], (n, *shape))
        items.append((clip_id, lc.pack(mean, np.full((n, *shape), std, np.float32), b"\0" * 32)))
    w.put(items)
    w.close()
