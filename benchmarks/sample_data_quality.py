"""Quality and cost of the sample dataset (`talk sample-data`, stages/sample_data.py).

Generates the default dataset (params.yaml's ``sample_data``, output in a temporary folder unless
``--data`` points at an existing one) and measures, on every frame of every clip:

- face detection: dlib's HOG detector finds exactly one face (target >= 99% of frames);
- lip-sync ground truth: mouth openness re-measured with dlib's 68 landmarks (inner-lip gap /
  inter-ocular distance) against the ``mouth_open`` column of ``<nnn>.gt.csv``: Pearson r
  pooled and per clip (target >= 0.8);
- emotion: accuracy of the FER 7-class CNN (``fer`` package .tflite via ai-edge-litert; 64x64
  grayscale in [-1, 1]) per emotion and level, and on closed-mouth frames (FER reads any open
  mouth as surprise); contempt has no FER class. The unwarped source portraits are scored too;
- cost: generation wall time against a PyAV-only baseline measured in the same run (decode real
  256 px video and encode the same number of frames as H.264 + AAC clips of the same length,
  with the same number of processes), and peak RSS of the main process and of the workers.

    .venv/bin/python benchmarks/sample_data_quality.py [--data data/raw/mead] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from talk.core import params as P  # noqa: E402
from talk.media import io as media  # noqa: E402
from talk.synthesis import expressions as E  # noqa: E402
from talk.synthesis import rig as R  # noqa: E402

FER_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")  # the fer package's order
MEAD_TO_FER = {"neutral": "neutral", "angry": "angry", "disgusted": "disgust", "fear": "fear",
               "happy": "happy", "sad": "sad", "surprised": "surprise"}  # contempt: no FER class
CLOSED = 0.06  # IOD: ground-truth inner-lip gap below which a frame counts as closed-mouth
console = Console(width=150)


# --------------------------------------------------------------------------------------------
# Per-clip analysis (worker processes)


class _Analyser:
    def __init__(self):
        import cv2
        from ai_edge_litert.interpreter import Interpreter

        from talk.core.weights import fer_model

        cv2.setNumThreads(1)
        self.landmarker = R.Landmarker()
        self.fer = Interpreter(model_path=str(fer_model()))
        self.fer.allocate_tensors()
        self._in = self.fer.get_input_details()[0]["index"]
        self._out = self.fer.get_output_details()[0]["index"]

    def fer_probs(self, rgb: np.ndarray, pts: np.ndarray, margin: float = 0.15) -> np.ndarray:
        """FER class probabilities (7,) of the face around landmarks ``pts`` (68, 2)."""
        import cv2

        lo, hi = pts.min(0), pts.max(0)
        lo[1] -= 0.25 * (hi[1] - lo[1])  # the landmarks stop at the brows: include the forehead
        side = float(max(hi - lo)) * (1 + 2 * margin)
        c = 0.5 * (lo + hi)
        s = 64 / side
        m = np.array([[s, 0, 32 - s * c[0]], [0, s, 32 - s * c[1]]], np.float32)
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        patch = cv2.warpAffine(gray, m, (64, 64), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_CONSTANT)
        x = ((patch.astype(np.float32) / 255.0 - 0.5) * 2.0)[None, :, :, None]  # (1, 64, 64, 1)
        self.fer.set_tensor(self._in, x)
        self.fer.invoke()
        return self.fer.get_tensor(self._out)[0].astype(np.float32)

    def clip(self, video: Path) -> dict:
        import pandas as pd

        gt = pd.read_csv(video.with_suffix(".gt.csv"))
        frames = media.read_video(video)
        n = min(len(frames), len(gt))
        faces = np.zeros(n, np.int32)
        measured = np.full(n, np.nan, np.float32)
        fer = np.full((n, len(FER_CLASSES)), np.nan, np.float32)
        for t in range(n):
            found = self.landmarker.detect(frames[t], upsample=0)
            faces[t] = len(found)
            if len(found) == 1:
                measured[t] = E.mouth_open(found[0])
                fer[t] = self.fer_probs(frames[t], found[0])
        return {
            "path": str(video), "frames": len(frames), "gt_rows": len(gt), "emotion": gt["emotion"].iloc[0],
            "level": int(gt["level"].iloc[0]), "speaker": gt["speaker"].iloc[0], "faces": faces,
            "gt": gt["mouth_open"].to_numpy(np.float32)[:n], "measured": measured, "fer": fer,
        }


_A: _Analyser | None = None


def _init() -> None:
    global _A
    _A = _Analyser()


def _analyse(video: str) -> dict:
    assert _A is not None
    return _A.clip(Path(video))


# --------------------------------------------------------------------------------------------
# Baseline: PyAV only


def _baseline_task(args: tuple[str, int, int, str]) -> int:
    """Decode ``n`` frames of a real video (looping) and encode them + audio, ``n_clips`` times."""
    video, n_clips, n, out = args
    audio = np.zeros(n * media.AUDIO_RATE // media.VIDEO_FPS, np.float32)
    written = 0
    for k in range(n_clips):
        clip: list[np.ndarray] = []
        while len(clip) < n:
            for frame in media.iter_video(video):
                clip.append(frame)
                if len(clip) == n:
                    break
        written += media.write_video(Path(out) / f"{k:04d}.mp4", clip, audio=audio)
    return written


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished children so far."""
    return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))


def baseline(wild: list[Path], clips: int, n: int, workers: int) -> tuple[float, float, int]:
    """Wall and CPU seconds to decode real video and write ``clips`` x ``n`` frames with
    ``workers`` processes."""
    with tempfile.TemporaryDirectory() as tmp:
        per = [clips // workers + (i < clips % workers) for i in range(workers)]
        tasks = [(str(wild[i % len(wild)]), per[i], n, tmp) for i in range(workers)]
        t0, c0 = time.perf_counter(), cpu_seconds()
        with mp.get_context("spawn").Pool(workers) as pool:
            total = sum(pool.map(_baseline_task, tasks))
        return time.perf_counter() - t0, cpu_seconds() - c0, total


# --------------------------------------------------------------------------------------------


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.std(a[ok]) < 1e-6 or np.std(b[ok]) < 1e-6:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def source_fer(params) -> dict:
    """FER's reading of each unwarped, aligned source portrait (its bias before any warping)."""
    import cv2

    from talk.synthesis.sources import read_sources

    a = _Analyser()
    out = {}
    cfg = params.sample_data
    for s in read_sources(params.paths.sources):
        if s.kind != "portrait" or (cfg.identities and s.speaker not in cfg.identities):
            continue
        rgb = cv2.cvtColor(cv2.imread(str(s.file)), cv2.COLOR_BGR2RGB)
        rig = R.rig_from_image(rgb, cfg.rig_spec(), str(s.file))
        frame = rig.render(rig.pose(np.zeros((68, 2), np.float32)))
        found = a.landmarker.detect(frame)
        if found:
            out[s.speaker] = FER_CLASSES[int(np.argmax(a.fer_probs(frame, found[0])))]
    return out


def _report_cost(results: dict) -> None:
    if "cost" not in results:
        return
    c = results["cost"]
    t = Table(title="generation cost (default params; baseline: PyAV decode + encode of as many frames)")
    for col in ("clips", "frames", "workers", "wall s", "baseline wall s", "ratio", "CPU s", "baseline CPU s",
                "CPU ratio", "peak RSS main MB", "peak RSS worker MB"):
        t.add_column(col, justify="right")
    t.add_row(str(c["clips"]), str(c["frames"]), str(c["workers"]), f"{c['generation_s']:.1f}", f"{c['baseline_s']:.1f}",
              f"{c['ratio']:.2f}x", f"{c['generation_cpu_s']:.1f}", f"{c['baseline_cpu_s']:.1f}", f"{c['cpu_ratio']:.2f}x",
              str(c["peak_rss_main_mb"]), str(c["peak_rss_worker_mb"]))
    console.print(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--data", type=Path, default=None, help="an existing MEAD-layout output to analyse (skips generation and timing)")
    ap.add_argument("--workers", type=int, default=2, help="processes for the analysis")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--cost-only", action="store_true", help="generate and time only (no quality analysis)")
    args = ap.parse_args()
    results: dict = {}

    with tempfile.TemporaryDirectory() as tmp:
        if args.data is None:
            from talk.core import runtime
            from talk.stages import sample_data as S

            out = Path(tmp) / "mead"
            params = P.load(args.params, [f"paths.raw={tmp}"])  # writes <tmp>/mead and <tmp>/wild
            runtime.setup(params.base)
            t0, c0 = time.perf_counter(), cpu_seconds()
            summary = S.run(params)
            gen_s, gen_cpu = time.perf_counter() - t0, cpu_seconds() - c0
            rss_main = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            rss_workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            cfg = params.sample_data
            wild = sorted(Path(tmp, "wild").glob("*.mp4"))
            n = int(round(cfg.seconds * media.VIDEO_FPS))
            base_s, base_cpu, base_frames = baseline(wild, summary["clips"], n, cfg.workers)
            results["cost"] = {
                "clips": summary["clips"], "frames": summary["frames"], "workers": cfg.workers,
                "generation_s": round(gen_s, 2), "generation_cpu_s": round(gen_cpu, 2),
                "baseline_s": round(base_s, 2), "baseline_cpu_s": round(base_cpu, 2), "baseline_frames": base_frames,
                "ratio": round(gen_s / base_s, 2), "cpu_ratio": round(gen_cpu / base_cpu, 2),
                "peak_rss_main_mb": round(rss_main), "peak_rss_worker_mb": round(rss_workers),
            }
        else:
            out = args.data
            params = P.load(args.params)
        if args.cost_only:
            _report_cost(results)
            if args.json:
                args.json.write_text(json.dumps(results, indent=2))
            return
        videos = sorted(str(p) for p in out.rglob("*.mp4"))
        t0 = time.perf_counter()
        with mp.get_context("spawn").Pool(args.workers, _init) as pool:
            clips = pool.map(_analyse, videos, chunksize=4)
        analysis_s = time.perf_counter() - t0
        sources = source_fer(params)

    # -- face detection and lip sync
    faces = np.concatenate([c["faces"] for c in clips])
    gt = np.concatenate([c["gt"] for c in clips])
    meas = np.concatenate([c["measured"] for c in clips])
    per_clip = np.array([pearson(c["gt"], c["measured"]) for c in clips])
    flat = np.array([np.std(c["gt"]) < 0.02 for c in clips])
    rs = per_clip[np.isfinite(per_clip)]
    results["faces"] = {"frames": int(len(faces)), "one_face": round(float((faces == 1).mean()), 5),
                        "none": int((faces == 0).sum()), "several": int((faces > 1).sum())}
    results["lip_sync"] = {
        "pooled_r": round(pearson(gt, meas), 4), "clips": len(clips), "clip_r_min": round(float(rs.min()), 4),
        "clip_r_p05": round(float(np.percentile(rs, 5)), 4), "clip_r_median": round(float(np.median(rs)), 4),
        "clips_r_ge_0.8": round(float((rs >= 0.8).mean()), 4), "flat_gt_clips": int(flat.sum()),
        "gt_mean": round(float(gt.mean()), 4), "measured_minus_gt_mean": round(float(np.nanmean(meas - gt)), 4),
        "gt_closed_fraction": round(float((gt < CLOSED).mean()), 4),
    }
    results["gt_rows_match_frames"] = all(c["gt_rows"] == c["frames"] for c in clips)

    # -- FER accuracy per emotion x level, and on closed-mouth frames
    fer_rows = {}
    for emotion, label in MEAD_TO_FER.items():
        k = FER_CLASSES.index(label)
        row = {}
        for level in (1, 2, 3):
            sel = [c for c in clips if c["emotion"] == emotion and c["level"] == level]
            if not sel:
                continue
            probs = np.concatenate([c["fer"] for c in sel])
            g = np.concatenate([c["gt"] for c in sel])
            ok = np.isfinite(probs).all(1)
            pred = probs.argmax(1)
            row[f"level_{level}"] = round(float((pred[ok] == k).mean()), 3)
            closed = ok & (g < CLOSED)
            row[f"level_{level}_closed"] = round(float((pred[closed] == k).mean()), 3) if closed.any() else None
            row[f"level_{level}_closed_n"] = int(closed.sum())
        fer_rows[emotion] = row
    results["fer"] = fer_rows
    results["fer_sources"] = sources
    results["analysis_s"] = round(analysis_s, 1)

    # -- report
    _report_cost(results)
    f, ls = results["faces"], results["lip_sync"]
    t = Table(title="faces and lip-sync ground truth (dlib re-measure)")
    for col in ("frames", "exactly one face", "pooled r", "clip r min", "clip r p5", "clip r median", "clips r>=0.8"):
        t.add_column(col, justify="right")
    t.add_row(str(f["frames"]), f"{f['one_face']:.4f}", f"{ls['pooled_r']:.3f}", f"{ls['clip_r_min']:.3f}",
              f"{ls['clip_r_p05']:.3f}", f"{ls['clip_r_median']:.3f}", f"{ls['clips_r_ge_0.8']:.3f}")
    console.print(t)
    t = Table(title=f"FER accuracy (chance 1/7 = 0.14; closed: gt gap < {CLOSED} IOD; neutral has level 1 only)")
    for col in ("emotion", "level 1", "level 2", "level 3", "top level, closed mouth", "closed frames"):
        t.add_column(col, justify="right")
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for emotion, row in fer_rows.items():
        top = max((int(k.split("_")[1]) for k in row if k.count("_") == 1), default=1)
        t.add_row(emotion, fmt(row.get("level_1")), fmt(row.get("level_2")), fmt(row.get("level_3")),
                  fmt(row.get(f"level_{top}_closed")), str(row.get(f"level_{top}_closed_n", "-")))
    console.print(t)
    console.print(f"FER on the unwarped sources: {sources}")
    checks = {"one face >= 0.99": f["one_face"] >= 0.99, "pooled r >= 0.8": ls["pooled_r"] >= 0.8,
              "median clip r >= 0.8": ls["clip_r_median"] >= 0.8, "gt rows = frames": results["gt_rows_match_frames"]}
    console.print("checks: " + ", ".join(f"{k}: {'PASS' if v else 'FAIL'}" for k, v in checks.items()))
    results["checks"] = checks
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
