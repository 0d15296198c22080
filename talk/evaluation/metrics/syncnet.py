"""Sync-C / Sync-D analogues with the talk lip-sync expert (train_sync's ``paths.sync``).

SyncNet's evaluation (syncnet_python ``evaluate``; Wav2Lip / LatentSync report it) with our own
expert in place of the pretrained SyncNet: every window of W mouth crops (the lower half of the
frames) and the Whisper window of the same frame are embedded; the mean distance over windows
is taken at each audio-video offset -N .. N (``evaluate.sync_max_offset``). Per clip:

- ``sync_c_talk``: Sync-C (talk expert), the curve's median minus its minimum (up: a clear sync);
- ``sync_d_talk``: Sync-D (talk expert), the distance at the best offset (down);
- ``sync_d0_talk``: the distance at offset 0 (down: in sync where it should be);
- ``sync_offset_talk``: the best offset, frames (positive: the mouth lags the sound).

A row is the mean over its clips; its offset is that of the minimum of the mean curve. The
audio is the clip's own: its Whisper states cached by audio_features (every row of a clip is
scored against the same audio), the first 2T of them for T scored frames. These numbers are
*not* comparable with papers' Sync-C / Sync-D (another network, another audio feature; those
need ``evaluate.syncnet``, talk.evaluation.metrics.external).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from talk.core.errors import TalkError

KEYS = ("sync_c_talk", "sync_d_talk", "sync_d0_talk", "sync_offset_talk")


def frames_to_mouths(frames: np.ndarray, size: int) -> np.ndarray:
    """(T, S, S, 3) uint8 aligned crops -> (T, 3, size, 2 size) float32 mouth crops in [0, 1]."""
    import torch

    from talk.models.syncnet import mouth_crops

    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255
        return mouth_crops(x, size).numpy()


class SyncExpertMetric:
    """Per-clip Sync-C / Sync-D (talk expert); ``clip_metrics`` / ``row_metrics`` as the other
    optional metrics of evaluate (talk.evaluation.metrics.external)."""

    def __init__(self, folder: Path | str, audio_features: Path | str, max_offset: int):
        from talk.artifacts.sync import load_expert

        self.expert = load_expert(folder)
        self.audio_features = Path(audio_features)
        self.max_offset = int(max_offset)
        self._audio: dict[str, np.ndarray] = {}

    def audio(self, clip_id: str, n_frames: int) -> np.ndarray:
        """The clip's cached Whisper states for its first ``n_frames`` video frames, (2n, L, D)."""
        a = self._audio.get(clip_id)
        if a is None:
            path = self.audio_features / f"{clip_id}.npy"
            if not path.is_file():
                raise TalkError(f"audio features of clip {clip_id} not found at {path}; run `talk audio-features`")
            a = np.load(path, mmap_mode="r", allow_pickle=False)
            cfg = self.expert.cfg
            if a.ndim != 3 or a.shape[1:] != (cfg.audio_layers, cfg.audio_dim):
                raise TalkError(f"{path}: features of shape {a.shape} do not fit the lip-sync expert "
                                f"(L, D = {cfg.audio_layers}, {cfg.audio_dim}); re-run `talk train-sync`")
            self._audio = {clip_id: a}  # one clip at a time: evaluate scores a clip's rows together
        return np.asarray(a[: 2 * n_frames], np.float32)

    def scores(self, frames: np.ndarray, audio: np.ndarray) -> dict:
        from talk.models.syncnet import expert_sync_scores

        n = min(len(frames), len(audio) // 2)
        return expert_sync_scores(self.expert, frames_to_mouths(frames[:n], self.expert.cfg.mouth_size),
                                  audio[: 2 * n], self.max_offset)

    def clip_metrics(self, clip, frames: np.ndarray, ref_frame: np.ndarray, extra: dict) -> dict:
        s = self.scores(frames, self.audio(clip.clip_id, len(frames)))
        extra["sync_talk_curve"] = np.asarray(s["curve"], np.float64)
        return {"sync_c_talk": s["sync_c"], "sync_d_talk": s["sync_d"], "sync_d0_talk": s["d0"],
                "sync_offset_talk": s["offset"]}

    def row_metrics(self, row: str, extras: list[dict], real_extras: list[dict], metrics: list[dict]) -> dict:
        out = {}
        for key in ("sync_c_talk", "sync_d_talk", "sync_d0_talk"):
            v = np.array([m[key] for m in metrics], np.float64)
            out[key] = float(np.nanmean(v)) if (~np.isnan(v)).any() else math.nan
        curves = np.array([e["sync_talk_curve"] for e in extras if "sync_talk_curve" in e], np.float64)
        ok = curves[~np.isnan(curves).any(1)] if len(curves) else curves
        out["sync_offset_talk"] = int(np.argmin(ok.mean(0))) - self.max_offset if len(ok) else math.nan
        return out
