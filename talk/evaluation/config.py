"""The `evaluate` section of params.yaml (docs/method.md §3): which clips are scored and how.

Paths are not here: the stage reads the crops from ``paths.crops``, writes to ``paths.evaluate``
and shows ``paths.prior``/embeddings.png in the report when it exists.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from talk.core.params import one_of, rng


@dataclasses.dataclass(frozen=True)
class Config:
    split: str = dataclasses.field(default="test", metadata=one_of("train", "val", "test"))  # clips scored
    reference: str = dataclasses.field(default="neutral", metadata=one_of("first_frame", "neutral"))  # frame each clip is rendered from: its own first frame, or the first frame of the speaker's neutral clip
    judge_split: str = dataclasses.field(default="train", metadata=one_of("train", "val", "test"))  # clips the emotion classifier learns from
    max_clips: int = dataclasses.field(default=32, metadata=rng(0))  # clips scored, spread over speakers and emotions (0 = all); >= 32 across the test identities
    max_frames: int = dataclasses.field(default=40, metadata=rng(0))  # frames scored per clip from its start (0 = all)
    detect_upsample: int = dataclasses.field(default=-1, metadata=rng(-1, 2))  # dlib HOG upsampling (-1 = 1 below 256 px, else 0)
    descriptor_stride: int = dataclasses.field(default=5, metadata=rng(1))  # dlib 128-d descriptor on every k-th frame (74 ms each)
    sync_max_offset: int = dataclasses.field(default=5, metadata=rng(1))  # frames, +- range of the audio-video offset search
    closed_mouth_gap: float = dataclasses.field(default=0.05, metadata=rng(0.0))  # inner-lip gap / inter-ocular distance below which a mouth counts as closed
    drift_window: int = dataclasses.field(default=25, metadata=rng(1))  # frames (1 s): identity drift = mean distance over a clip's last window minus its first (shorter clips: half their length each)
    pause_db: float = dataclasses.field(default=30.0, metadata=rng(0.0))  # dB below the clip's speech level (95th-percentile loudness) at which a frame is silent
    pause_min_frames: int = dataclasses.field(default=5, metadata=rng(1))  # frames: shortest silent stretch that counts as a pause (mouth closed in pauses)
    pause_trim: int = dataclasses.field(default=1, metadata=rng(0))  # frames left out at each end of a pause (the mouth closes after the sound stops)
    long_render: float = dataclasses.field(default=0.0, metadata=rng(0.0))  # s: one test identity's test speech concatenated and rendered in one go, for identity / sharpness / colour drift (0 = off; >= 30 for a long-render check)
    judge_max_clips: int = dataclasses.field(default=64, metadata=rng(0))  # training clips for the emotion classifier, spread over speakers and emotions (0 = all)
    judge_frames_per_clip: int = dataclasses.field(default=12, metadata=rng(1))  # training frames per clip for the emotion classifier
    judge_l2: float = dataclasses.field(default=1e-3, metadata=rng(0.0))  # classifier weight decay
    judge_max_iter: int = dataclasses.field(default=300, metadata=rng(1))  # classifier gradient steps (full batch, Nesterov)
    judge_margin: float = dataclasses.field(default=0.1, metadata=rng(0.0, 1.0))  # classifier face patch: widening of the dlib box per side, x its side
    fer_margin: float = dataclasses.field(default=0.15, metadata=rng(0.0, 1.0))  # FER face patch: widening of the dlib box per side, x its side
    strip_frames: int = dataclasses.field(default=6, metadata=rng(1))  # frames per strip in the report
    strip_size: int = dataclasses.field(default=96, metadata=rng(16))  # px, side of a strip frame in the report
    syncnet: Path | None = None  # optional: SyncNet checkpoint (syncnet_python's syncnet_v2.model) for Sync-C / Sync-D
    inception: Path | None = None  # optional: TorchScript Inception (inception-2015-12-05.pt) for paper-style FID
    arcface: str | None = None  # optional: insightface pack name under paths.weights/models/ (e.g. buffalo_l) for ArcFace CSIM

    def pretrained(self, params) -> list:
        """Optional evaluation weights, listed by `talk doctor`."""
        from talk.core import weights

        out = []
        if self.syncnet is not None:
            out.append(weights.check("SyncNet (Sync-C / Sync-D)", "evaluate.syncnet", False,
                                     lambda: weights.local_file(self.syncnet, "SyncNet checkpoint")))
        if self.inception is not None:
            out.append(weights.check("Inception (FID)", "evaluate.inception", False,
                                     lambda: weights.local_file(self.inception, "Inception TorchScript")))
        if self.arcface is not None:
            out.append(weights.check("ArcFace (CSIM)", "evaluate.arcface", False,
                                     lambda: weights.insightface_pack(params.paths.weights, self.arcface)))
        return out
