"""Render and score the clips of `evaluate` (docs/method.md §3, MEAD protocol).

Three rows are scored in the same run, on the same clips and judges:

- ``model``: the renderer under test;
- ``real``: the real clips themselves (the ceiling);
- ``floor``: a trivial baseline repeating the reference frame for the clip's length.

``train_judge`` fits the emotion classifier on real training frames; ``Scorer`` gives one row's
per-clip metrics against the real clip; ``score_clips`` renders every chosen clip with each row's
renderer and scores it, keeping what the pooled metrics and the report need.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd

from talk.core.errors import TalkError
from talk.core.runtime import track
from talk.data.crops import clip_file
from talk.evaluation import judges
from talk.evaluation.clips import Clip, ClipInfo, RenderFn, conform, load_clip, neutral_clips, repeat_reference, select
from talk.evaluation.config import Config
from talk.evaluation.metrics import appearance, distribution, identity, image, landmarks, sync
from talk.evaluation.metrics.face import FaceAnalyzer, FaceTrack
from talk.evaluation.roundtrip import RoundTrip
from talk.media import io as media
from talk.models.emotions import EMOTIONS

ROWS = ("model", "real", "floor")  # scored rows: the renderer, the ceiling, the floor


def train_judge(cfg: Config, crops: Path, df: pd.DataFrame, analyser: FaceAnalyzer) -> tuple[judges.EmotionClassifier, dict]:
    """Fit the 8-class classifier on evenly spaced frames of the real ``judge_split`` clips."""
    rows = select(df, cfg.judge_split, cfg.judge_max_clips)
    if len(rows) == 0:
        raise TalkError(f"no labelled '{cfg.judge_split}' clips in {crops / 'manifest.csv'}: "
                        "the emotion classifier learns from them")
    if rows.emotion.nunique() < 2:
        raise TalkError(f"the '{cfg.judge_split}' split has only one emotion: the classifier needs at least two")
    feats, labels = [], []
    for row in track(list(rows.itertuples()), "evaluate: judge features"):
        frames = media.read_video(clip_file(crops, row, "frames.mp4"))
        idx = np.unique(np.linspace(0, len(frames) - 1, cfg.judge_frames_per_clip).round().astype(int))
        sub = frames[idx]
        tr = analyser.analyse(sub, descriptor_stride=0)
        feats.append(judges.classifier_features(sub, tr.boxes, tr.landmarks, cfg.judge_margin))
        labels.append(np.full(len(sub), EMOTIONS.index(row.emotion)))
    x, y = np.concatenate(feats), np.concatenate(labels)
    clf = judges.EmotionClassifier(l2=cfg.judge_l2, max_iter=cfg.judge_max_iter).fit(x, y)
    train_acc = float((clf.predict_proba(x).argmax(1) == y).mean())
    info = {"frames": int(len(x)), "clips": int(len(rows)), "split": cfg.judge_split,
            "train_frame_acc": train_acc, "train_loss": clf.train_loss, "speakers": int(rows.speaker.nunique()), "classes": sorted(set(rows.emotion), key=EMOTIONS.index)}
    return clf, info


@dataclasses.dataclass
class RowScore:
    """What one row scored on one clip (per-clip metrics + raw material for pooled metrics)."""

    metrics: dict
    lag_curve: np.ndarray  # (2N + 1,) correlation of mouth opening vs loudness per offset
    descriptors: np.ndarray  # (K, 128) the frames' dlib descriptors (NaN rows removed)
    clf_frame_pred: np.ndarray  # (T,) classifier's per-frame class
    fer_frame_pred: np.ndarray  # (T,) FER's per-frame class
    closed: np.ndarray  # (T,) bool, closed-mouth frames
    extra_features: dict  # optional feature spaces' per-frame / per-clip features
    opening: np.ndarray  # (T,) mouth opening (inner-lip gap / inter-ocular distance)
    pause: np.ndarray  # (T,) bool, frames inside a silent stretch of the audio
    speech: np.ndarray  # (T,) bool, frames at speech loudness


@dataclasses.dataclass
class Reference:
    """The frame a clip is rendered from, analysed once for every row."""

    frame: np.ndarray  # (H, W, 3) uint8
    descriptor: np.ndarray  # (128,) dlib descriptor
    landmarks: np.ndarray  # (68, 2) px
    round_trip: np.ndarray | None  # (H, W, 3) uint8, its VAE round trip (None: no VAE artefact)

    @property
    def mask(self) -> np.ndarray:  # (H, W) bool, the face region
        h, w = self.frame.shape[:2]
        return appearance.face_masks(self.landmarks[None], h, w)[0]


def appearance_metrics(frames: np.ndarray, track_: FaceTrack, ref: Reference) -> dict:
    """Face sharpness ratio, pixel ΔE and mean-colour ΔE of ``frames`` against the reference's
    VAE round trip (per-clip means; NaN without a VAE)."""
    if ref.round_trip is None:
        return {"sharpness_ratio": math.nan, "delta_e": math.nan, "colour_shift": math.nan}
    h, w = frames.shape[1:3]
    masks = appearance.face_masks(track_.landmarks, h, w)
    ref_mask = ref.mask
    de, shift = appearance.face_colour(frames, masks, ref.round_trip, ref_mask)
    return {
        "sharpness_ratio": float(np.nanmean(appearance.sharpness_ratio(frames, masks, ref.round_trip, ref_mask))),
        "delta_e": float(np.nanmean(de)),
        "colour_shift": float(np.nanmean(shift)),
    }


def load_extras(cfg: Config, weights: Path) -> dict:
    """Optional paper-style metrics whose weights the user supplied (talk.evaluation.metrics.external);
    ``weights`` is ``paths.weights`` (insightface packs live under it)."""
    from talk.evaluation.metrics import external

    out = {}
    if cfg.syncnet is not None:
        out["syncnet"] = external.SyncNetMetric(cfg.syncnet)
    if cfg.inception is not None:
        out["inception"] = external.InceptionFeatures(cfg.inception)
    if cfg.arcface is not None:
        out["arcface"] = external.ArcFaceCSIM(weights, cfg.arcface)
    return out


class Scorer:
    """Per-clip metrics of one row's frames against the real clip (docs/method.md §3)."""

    def __init__(self, cfg: Config, clf: judges.EmotionClassifier, weights: Path):
        self.cfg = cfg
        self.clf = clf
        self.fer = judges.FERJudge(margin=cfg.fer_margin)
        self.extras = load_extras(cfg, weights)

    def score(self, clip: Clip, frames: np.ndarray, track_: FaceTrack, real_track: FaceTrack,
              ref: Reference) -> RowScore:
        """``frames`` (T, H, W, 3) with their face analysis ``track_``; ``real_track`` is the real
        clip's, ``ref`` the analysed reference frame."""
        cfg = self.cfg
        real = clip.frames
        size = real.shape[2]
        m: dict = {"n_frames": len(frames), "face_rate": float(track_.found.mean())}
        m["psnr"] = float(image.psnr(frames, real).mean())
        m["ssim"] = float(image.ssim(frames, real).mean())
        m["m_lmd"] = float(landmarks.m_lmd(track_.landmarks, real_track.landmarks, size).mean())
        m["f_lmd"] = float(landmarks.f_lmd(track_.landmarks, real_track.landmarks, size).mean())

        opening = sync.mouth_opening(track_.landmarks)
        loud = sync.loudness(clip.audio, len(frames))
        curve = sync.lagged_correlation(opening, loud, cfg.sync_max_offset)
        m["sync_corr"] = float(curve[cfg.sync_max_offset])
        m["mouth_open_std"] = float(opening.std())
        pause = sync.pauses(loud, cfg.pause_db, cfg.pause_min_frames, cfg.pause_trim)
        speech = sync.speech(loud, cfg.pause_db)
        m["pause_frames"] = int(pause.sum())
        m["mouth_open_pause"] = float(opening[pause].mean()) if pause.any() else math.nan
        m["mouth_open_speech"] = float(opening[speech].mean()) if speech.any() else math.nan
        m["closed_in_pause"] = float((opening[pause] < cfg.closed_mouth_gap).mean()) if pause.any() else math.nan

        desc = track_.descriptors[track_.has_descriptor]
        m["csim_dlib128"] = distribution.csim(desc, ref.descriptor)
        dist = identity.distances(track_.descriptors, ref.descriptor)  # (T,), NaN between strided frames
        m["id_distance"] = float(np.nanmean(dist)) if track_.has_descriptor.any() else math.nan
        m["id_drift"] = identity.drift(dist, cfg.drift_window)
        m.update(appearance_metrics(frames, track_, ref))

        x = judges.classifier_features(frames, track_.boxes, track_.landmarks, cfg.judge_margin)
        p_clf = self.clf.predict_proba(x)  # (T, 8)
        target = EMOTIONS.index(clip.emotion)
        m["clf_pred"] = EMOTIONS[int(p_clf.mean(0).argmax())]
        m["clf_frame_acc"] = float((p_clf.argmax(1) == target).mean())

        p_fer = self.fer.predict_proba(frames, track_.boxes)  # (T, 7)
        fer_pred = p_fer.argmax(1)
        closed = opening < cfg.closed_mouth_gap
        m["fer_pred"] = judges.FER_CLASSES[int(p_fer.mean(0).argmax())]
        fer_target = judges.fer_label(clip.emotion)
        m["fer_frame_acc"] = float((fer_pred == fer_target).mean()) if fer_target is not None else math.nan
        m["closed_frames"] = int(closed.sum())
        extra = {}
        for name, ext in self.extras.items():
            m.update(ext.clip_metrics(clip, frames, ref_frame=clip.ref, extra=extra))
        return RowScore(m, curve, desc, p_clf.argmax(1), fer_pred, closed, extra, opening, pause, speech)


@dataclasses.dataclass
class Scored:
    """Everything a run of `evaluate` scored, for the pooled metrics, notes and report."""

    clips: list[ClipInfo]  # the scored clips (their frames are not kept)
    scores: dict[str, list[RowScore]]  # row -> one score per clip, in ``clips`` order
    per_clip: list[dict]  # per_clip.csv rows: row, clip labels, per-clip metrics
    strips: dict[str, dict[str, dict[str, np.ndarray]]]  # speaker -> emotion -> row -> (K, H, W, 3) report frames
    judge: dict  # the emotion classifier's training summary
    extras: dict  # the optional paper-style metrics that were loaded
    reference_fallbacks: int  # clips rendered from their own first frame for want of a neutral clip
    vae: Path | None = None  # the VAE whose round trip of each reference the appearance metrics use (None: skipped)
    long: object | None = None  # talk.evaluation.long_render.LongRender, when evaluate.long_render > 0


def score_clips(cfg: Config, crops: Path, df: pd.DataFrame, chosen: pd.DataFrame, render_fn: RenderFn,
                weights: Path, vae: Path | None = None, sync_expert=None) -> Scored:
    """Train the judge on the real ``judge_split`` clips, then render each ``chosen`` clip with
    ``render_fn`` (the model row) and the floor, and score them and the real clip; ``vae``: the
    VAE artefact whose round trip of each reference the appearance metrics compare with (None or
    absent: those metrics are skipped). With ``cfg.long_render``, also the long render.
    ``sync_expert``: a ``metrics.syncnet.SyncExpertMetric`` (Sync-C / Sync-D, talk expert) or None."""
    analyser = FaceAnalyzer(upsample=cfg.detect_upsample)
    round_trip = RoundTrip(vae) if vae is not None and RoundTrip.available(vae) else None
    clf, judge_info = train_judge(cfg, crops, df, analyser)
    scorer = Scorer(cfg, clf, weights)
    if sync_expert is not None:
        scorer.extras["sync_expert"] = sync_expert
    renderers: dict[str, RenderFn] = {"model": render_fn, "floor": repeat_reference}

    clips: list[ClipInfo] = []  # frames are not kept: a full-profile test split would not fit in memory
    scores: dict[str, list[RowScore]] = {r: [] for r in ROWS}
    per_clip = []
    strips: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    neutral = neutral_clips(df, cfg.split)
    fallbacks = 0
    references: dict[str, Reference] = {}  # speaker -> the reference of its first scored clip (the long render's)
    for row in track(list(chosen.itertuples()), "evaluate: render + score"):
        clip, fell_back = load_clip(crops, row, cfg.reference, cfg.max_frames, neutral)
        fallbacks += fell_back
        real_track = analyser.analyse(clip.frames, cfg.descriptor_stride)
        ref_track = analyser.analyse(clip.ref[None], 1)  # cached when ref = frame 0
        ref = Reference(clip.ref, ref_track.descriptors[0], ref_track.landmarks[0],
                        round_trip(clip.ref) if round_trip is not None else None)
        references.setdefault(clip.speaker, ref)
        outputs = {"real": clip.frames}
        for name, fn in renderers.items():
            rendered = fn(clip.ref.copy(), clip.audio.copy(), clip.emotion, clip.level)
            outputs[name] = conform(rendered, clip.frames, f"{name} renderer on {clip.clip_id}")
        for name in ROWS:
            frames = outputs[name]
            tr = real_track if name == "real" else analyser.analyse(frames, cfg.descriptor_stride, fallback=real_track.boxes)
            s = scorer.score(clip, frames, tr, real_track, ref)
            scores[name].append(s)
            per_clip.append({"row": name, "clip_id": clip.clip_id, "speaker": clip.speaker,
                             "emotion": clip.emotion, "level": clip.level, **s.metrics})
        by_emotion = strips.setdefault(clip.speaker, {})
        if clip.emotion not in by_emotion:
            idx = np.linspace(0, len(clip.frames) - 1, cfg.strip_frames).round().astype(int)
            by_emotion[clip.emotion] = {name: outputs[name][idx] for name in ("model", "real")}
        clips.append(ClipInfo(clip.clip_id, clip.speaker, clip.emotion, clip.level, len(clip.frames)))
        analyser.clear_cache()
    long = None
    if cfg.long_render > 0:
        from talk.evaluation import long_render

        speaker = str(chosen.speaker.iloc[0])
        rows = df[(df.split == cfg.split) & (df.speaker.astype(str) == speaker)]
        long = long_render.render(cfg, crops, rows, references[speaker], render_fn, analyser)
        analyser.clear_cache()
    return Scored(clips, scores, per_clip, strips, judge_info, scorer.extras, fallbacks,
                  vae if round_trip is not None else None, long)
