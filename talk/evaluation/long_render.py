"""The long render of `evaluate` (``evaluate.long_render`` seconds, 0 = off): one test identity's
test speech concatenated and rendered in one go from its reference frame, to see whether the face
holds over a long stretch (identity drift, sharpness and colour of the first vs the last second).

Test clips are a few seconds long, too short for a renderer that slowly loses the person (its own
outputs fed back as motion context) to show it. Only the model row is rendered: the floor is the
reference frame repeated (no drift by construction) and no real clip is that long.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd

from talk.data.crops import clip_file
from talk.evaluation.clips import HOP, RenderFn, conform
from talk.evaluation.metrics import appearance, identity
from talk.evaluation.metrics.face import FaceAnalyzer
from talk.media import io as media
from talk.media.io import VIDEO_FPS

EMOTION = "neutral"  # the long render's emotion: speech alone drives it


@dataclasses.dataclass
class LongRender:
    """What the long render showed (the model row only)."""

    speaker: str
    clips: list[str]  # the test clips whose speech was concatenated, in order (repeats when cycled)
    metrics: dict  # long_* metrics, added to the model row of metrics.json
    first: np.ndarray  # (K, H, W, 3) frames of the first second
    last: np.ndarray  # (K, H, W, 3) frames of the last second
    curve: np.ndarray  # (N, 2) time (s), identity distance to the reference: about one point a second


def speech(crops: Path, rows: pd.DataFrame, seconds: float) -> tuple[np.ndarray, list[str]]:
    """``seconds`` of 16 kHz audio: the clips of ``rows`` one after another (cycled when they are
    shorter in all), cut to a whole number of frames; and the clip ids used."""
    need = int(round(seconds * VIDEO_FPS)) * HOP
    parts, used, total = [], [], 0
    rows = rows.sort_values("clip_id", kind="stable")
    while total < need:
        for row in rows.itertuples():
            a = media.read_audio(clip_file(crops, row, "audio.wav"))
            if len(a) == 0:
                continue
            parts.append(a)
            used.append(row.clip_id)
            total += len(a)
            if total >= need:
                break
        if not parts:
            raise ValueError("no audio in the long render's clips")
    return np.concatenate(parts)[:need].astype(np.float32), used


def render(cfg, crops: Path, rows: pd.DataFrame, ref, render_fn: RenderFn, analyser: FaceAnalyzer) -> LongRender:
    """Render ``cfg.long_render`` s of the speech of ``rows`` (one speaker's test clips) from the
    analysed reference ``ref`` (talk.evaluation.scoring.Reference) and score its drift."""
    audio, used = speech(crops, rows, cfg.long_render)
    n = len(audio) // HOP
    h, w = ref.frame.shape[:2]
    frames = conform(render_fn(ref.frame.copy(), audio, EMOTION, 0), np.broadcast_to(ref.frame, (n, h, w, 3)),
                     f"model renderer on the {cfg.long_render:g} s long render")
    window = min(cfg.drift_window, n // 2)
    step = cfg.descriptor_stride
    first = np.arange(0, window, step)
    last = np.arange(n - window, n, step)
    every = np.arange(0, n, VIDEO_FPS)  # one frame a second for the curve
    idx = np.unique(np.concatenate([first, last, every]))
    sub = frames[idx]
    tr = analyser.analyse(sub, descriptor_stride=1)
    dist = identity.distances(tr.descriptors, ref.descriptor)
    is_first, is_last = np.isin(idx, first), np.isin(idx, last)
    m = {"long_seconds": n / VIDEO_FPS, "long_face_rate": float(tr.found.mean()),
         "long_id_distance": float(np.nanmean(dist)),
         "long_id_drift": float(np.nanmean(dist[is_last]) - np.nanmean(dist[is_first]))}
    if ref.round_trip is not None:
        masks = appearance.face_masks(tr.landmarks, h, w)
        sharp = appearance.sharpness_ratio(sub, masks, ref.round_trip, ref.mask)
        de, _ = appearance.face_colour(sub, masks, ref.round_trip, ref.mask)
        for name, v in (("sharpness_ratio", sharp), ("delta_e", de)):
            m[f"long_{name}_first"] = float(np.nanmean(v[is_first]))
            m[f"long_{name}_last"] = float(np.nanmean(v[is_last]))
    else:
        for name in ("sharpness_ratio", "delta_e"):
            m[f"long_{name}_first"] = m[f"long_{name}_last"] = math.nan
    k = max(1, min(cfg.strip_frames, window))
    pick = np.linspace(0, window - 1, k).round().astype(int)
    curve = np.stack([idx / VIDEO_FPS, dist], 1)[np.isin(idx, every)]
    return LongRender(str(rows.speaker.iloc[0]), used, m, frames[pick].copy(), frames[n - window + pick].copy(), curve)
