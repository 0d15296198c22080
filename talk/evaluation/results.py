"""What `evaluate` concludes and writes (docs/method.md §3): row-level metrics pooled from the
per-clip scores, the metric table, the findings (a model that does not beat the floor), the notes,
and the output files: metrics.json (per row), notes.json, per_clip.csv, plots/ and report.html.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from talk.evaluation import judges, report
from talk.evaluation.clips import ClipInfo
from talk.evaluation.config import Config
from talk.evaluation.metrics import distribution, sync
from talk.evaluation.scoring import ROWS, RowScore, Scored
from talk.models.emotions import EMOTIONS

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
    "sync_c_talk": ("Sync-C (talk expert)", "up", "train_sync's expert, SyncNet's protocol: median minus minimum of the distance-vs-offset curve; not SyncNet's numbers"),
    "sync_d_talk": ("Sync-D (talk expert)", "down", "train_sync's expert: mean window distance at the best offset"),
    "sync_d0_talk": ("Sync-D at offset 0 (talk expert)", "down", "train_sync's expert: mean window distance at offset 0"),
    "sync_offset_talk": ("sync offset (talk expert, frames)", "zero", "offset of the minimum of the mean distance curve; positive = mouth lags sound"),
    "sync_c": ("Sync-C (SyncNet)", "up", "SyncNet confidence (syncnet_python protocol)"),
    "sync_d": ("Sync-D (SyncNet)", "down", "SyncNet distance at the best offset"),
    "fid_inception": ("FID (Inception)", "down", "Inception pool3 Fréchet distance (user-supplied TorchScript)"),
    "csim_arcface": ("CSIM (ArcFace)", "up", "cosine of ArcFace embeddings vs the reference frame"),
}


def _nanmean(values) -> float:
    v = np.asarray([x for x in values if x is not None], np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if len(v) else math.nan


def aggregate(clips: list[ClipInfo], scores: dict[str, list[RowScore]], extras: dict) -> dict:
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


def findings(rows: dict) -> list[str]:
    """Flag a model row that does not beat the floor on lip sync or emotion accuracy."""
    model, floor, real = rows["model"], rows["floor"], rows["real"]
    out = []
    for key in ("sync_corr", "sync_c", "sync_c_talk", "emo_acc_clf", "emo_acc_fer"):
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


def notes(cfg: Config, df: pd.DataFrame, scored: Scored, rows: dict) -> dict:
    """notes.json: what was scored, the judge, the findings, the feature spaces, what was skipped."""
    clips = scored.clips
    return {
        "clips": len(clips),
        "frames": int(sum(c.n_frames for c in clips)),
        "split": cfg.split,
        "reference": cfg.reference,
        "reference_fallbacks": scored.reference_fallbacks,
        "unlabelled_clips_skipped": int(((df.split == cfg.split) & (df.emotion == "")).sum()),
        "judge": scored.judge,
        "findings": findings(rows),
        "feature_spaces": {
            "fid_dlib128 / fvd_dlib128 / csim_dlib128": "dlib_face_recognition_resnet_model_v1 (128-d), "
            f"every {cfg.descriptor_stride}th frame; not comparable with Inception FID / I3D FVD / ArcFace CSIM",
            "m_lmd / f_lmd": "dlib 68 landmarks of generated vs real frame, px rescaled to a 256 px crop",
            "sync_corr": "inner-lip gap / inter-ocular distance vs 40 ms RMS loudness in dB (floor -60 dB)",
            "emo_acc_fer": "FER 7-class (fer package .tflite); contempt has no FER class and is excluded",
        },
        "skipped": skipped_notes(cfg) + ([] if "sync_expert" in scored.extras else [
            "Sync-C / Sync-D (talk expert) skipped: no lip-sync expert in paths.sync (run `talk train-sync`)"]),
        "ceiling_note": "the real row scores the real clips against themselves: PSNR/SSIM/LMD/FID are trivially "
                        "perfect there; its lip sync, emotion accuracy and CSIM are the ceiling",
        "floor_note": "the floor repeats the reference frame: its CSIM is trivially high and its mouth never moves",
    }


def json_safe(obj):
    """JSON-ready copy: numpy scalars to Python, floats rounded to 6 places, NaN / inf to null."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if math.isnan(obj) or math.isinf(obj) else round(float(obj), 6)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write(folder: Path, cfg: Config, scored: Scored, rows: dict, notes: dict, prior_plot: Path | None) -> None:
    """metrics.json, notes.json, per_clip.csv, plots/ and report.html into ``folder``;
    ``prior_plot``: the prior's embedding plot shown in the report (None = left out)."""
    table = pd.DataFrame(scored.per_clip)
    (folder / "metrics.json").write_text(json.dumps(json_safe(rows), indent=2) + "\n")
    (folder / "notes.json").write_text(json.dumps(json_safe(notes), indent=2) + "\n")
    table.to_csv(folder / "per_clip.csv", index=False, float_format="%.6g")
    plots = report.write_plots(folder / "plots", scored.clips, scored.scores, cfg.sync_max_offset)
    report.write_html(folder / "report.html", report.ReportData(
        rows=rows, metrics=METRICS, notes=notes, per_clip=table, strips=scored.strips, plots=plots,
        prior_plot=prior_plot, strip_size=cfg.strip_size))
