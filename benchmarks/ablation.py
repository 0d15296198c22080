"""Benchmark: one row per denoiser lever of issue 14, each against the shipped default in the same run.

Every row runs the stages ``train_diffusion`` -> ``evaluate`` (the model row rendered with the
freshly trained denoiser, ``render.denoiser=diffusion``: no finetune_disc) with its ``--set``
overrides, as separate ``talk`` processes, into a temporary folder; then ``talk render`` of the demo
portrait and speech with that denoiser, timed as a user runs it (process start-up, model loading,
face crop, Whisper, sampling, VAE decode, H.264/AAC encode). Reported per row: every metric the
evaluate stage writes for its ``model`` row (metrics.json), the real-clip ceiling and the
repeated-reference floor (from the default row), train wall time and peak RSS, evaluate wall time,
render frames per wall second end to end, and each figure's change against the default row.

The upstream artefacts (crops, audio features, latent cache, VAE, prior) are read from ``--base``
(a checkout after ``dvc repro pretrain_prior``, default: this repo); nothing in it is written.

    .venv/bin/python benchmarks/ablation.py --quick [--steps 300] [--rows default,context_aug,face_lip] \
        [--base DIR] [--threads 2] [--json out.json] [--keep DIR]

``--quick``: fewer train steps (``--steps``, default 300) and a smaller evaluate (4 clips x 20
frames, a smaller emotion judge); figures at that size say which way a lever moves the numbers,
not the shipped model's values.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# lever -> its params overrides (the default row has none)
ROWS: dict[str, list[str]] = {
    "default": [],
    "context_aug": ["train_diffusion.objective.context_aug=0.5"],  # render σ: train_diffusion.sampling.context_aug
    "face_lip": ["train_diffusion.objective.w_face=2.0", "train_diffusion.objective.w_lip=4.0"],
    "residual": ["train_diffusion.objective.residual=true"],
    "audio_levels": ["model.denoiser.audio_levels=[1]"],
}
UPSTREAM = ("sources", "crops", "audio_features", "latents", "vae", "prior", "weights")  # paths read from --base
QUICK_EVAL = ["evaluate.max_clips=4", "evaluate.max_frames=20", "evaluate.judge_max_clips=16",
              "evaluate.judge_frames_per_clip=4"]
SHOWN = ("csim_dlib128", "face_rate", "sync_corr", "sync_corr_best", "emo_acc_clf", "emo_acc_fer", "ssim", "psnr",
         "m_lmd", "f_lmd", "fid_dlib128", "fvd_dlib128", "mouth_open_std")  # first, in this order; then any others


def run_timed(cmd: list[str], cwd: Path, env: dict, log: Path) -> tuple[float, float, int]:
    """(wall s, peak RSS MB, exit code) of one child process; its output to ``log``."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - t0, usage.ru_maxrss / 1024, p.returncode


def video_frames(path: Path) -> int:
    import av

    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, default=ROOT, help="checkout holding the upstream artefacts (read only)")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows of {', '.join(ROWS)}")
    ap.add_argument("--quick", action="store_true", help="cheap run: --steps train steps and a small evaluate")
    ap.add_argument("--steps", type=int, default=None, help="train_diffusion steps per row (--quick: 300)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="override for every row: section.key=value")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--keep", type=Path, default=None, help="keep each row's artefacts and logs here")
    ap.add_argument("--report", type=Path, default=None, help="only print the table of a --json file (a cut-short run's too)")
    args = ap.parse_args()

    from rich.console import Console

    from talk.core import params as P

    console = Console(width=180)
    if args.report is not None:
        saved = json.loads(args.report.read_text())
        print_table(console, saved["rows"], saved["quick"], saved["steps"], saved["threads"])
        if not saved.get("complete"):
            console.print("(cut short: the rows above are the ones measured)")
        return
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        sys.exit(f"ablation: unknown row(s) {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    if "default" not in rows:
        rows.insert(0, "default")
    base = args.base.resolve()
    params = P.load(args.params, args.sets)
    up = {k: (base / getattr(params.paths, k)) if not Path(getattr(params.paths, k)).is_absolute() else Path(getattr(params.paths, k))
          for k in UPSTREAM}
    for k in ("crops", "audio_features", "latents", "vae", "prior"):
        if not up[k].exists():
            sys.exit(f"ablation: {up[k]} not found; run `dvc repro pretrain_prior` (or the stages up to it) in {base} first")

    steps = args.steps if args.steps is not None else (300 if args.quick else None)
    common = [*args.sets, f"base.threads={args.threads}", *(f"paths.{k}={v}" for k, v in up.items())]
    if steps is not None:
        common += [f"train_diffusion.loop.steps={steps}", f"train_diffusion.loop.checkpoint_every={steps}",
                   "train_diffusion.preview.every=0"]
    if args.quick:
        common += QUICK_EVAL
    work_root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="talk-ablation-"))
    work_root.mkdir(parents=True, exist_ok=True)
    talk = str(Path(sys.executable).with_name("talk"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads), "DVC_NO_ANALYTICS": "1"}
    image = up["sources"] / params.render.demo_image
    audio = up["sources"] / params.render.demo_audio

    results: dict[str, dict] = {}
    for name in rows:
        w = work_root / name
        if w.exists():
            shutil.rmtree(w)
        w.mkdir(parents=True)
        sets = [*common, *ROWS[name], f"paths.diffusion={w / 'diffusion'}", f"paths.diffusion_train={w / 'diffusion_train'}",
                f"paths.evaluate={w / 'evaluate'}", "render.denoiser=diffusion"]
        flags = [a for s in sets for a in ("--set", s)]
        res: dict = {"overrides": ROWS[name]}
        console.print(f"[bold]{name}[/]: train_diffusion {' '.join(ROWS[name]) or '(shipped default)'}")
        res["train_s"], res["train_rss_mb"], rc = run_timed([talk, "train-diffusion", "--params", str(args.params), *flags],
                                                            base, env, w / "train.log")
        if rc:
            sys.exit(f"ablation: row {name}: train-diffusion exited {rc}; see {w / 'train.log'}")
        tm = json.loads((w / "diffusion_train" / "metrics.json").read_text())
        res["train_steps"], res["val_loss"] = tm.get("steps"), tm.get("val", {}).get("loss")
        res["preview_latent_psnr"] = tm.get("preview", {}).get("latent_psnr")
        console.print(f"  train {res['train_s']:.0f} s; evaluate …")
        res["eval_s"], res["eval_rss_mb"], rc = run_timed([talk, "evaluate", "--params", str(args.params), *flags],
                                                          base, env, w / "evaluate.log")
        if rc:
            sys.exit(f"ablation: row {name}: evaluate exited {rc}; see {w / 'evaluate.log'}")
        em = json.loads((w / "evaluate" / "metrics.json").read_text())
        res["metrics"], res["real"], res["floor"] = em.get("model", {}), em.get("real", {}), em.get("floor", {})
        out = w / "render.mp4"
        res["render_s"], res["render_rss_mb"], rc = run_timed(
            [talk, "render", "--params", str(args.params), "--image", str(image), "--audio", str(audio), "--out", str(out),
             "--emotion", "happy", *flags], base, env, w / "render.log")
        if rc:
            sys.exit(f"ablation: row {name}: render exited {rc}; see {w / 'render.log'}")
        res["render_frames"] = video_frames(out)
        res["render_fps"] = res["render_frames"] / res["render_s"]
        console.print(f"  evaluate {res['eval_s']:.0f} s; talk render {res['render_fps']:.1f} frames/s end to end")
        results[name] = res
        if args.json:  # after every row: a cut-short run keeps what it measured
            args.json.write_text(json.dumps({"quick": args.quick, "steps": steps, "threads": args.threads, "rows": results,
                                             "complete": False}, indent=2, default=float) + "\n")

    print_table(console, results, args.quick, steps, args.threads)
    console.print(f"talk render: `{image.name}` + `{audio.name}` ({results['default']['render_frames']} frames), one process "
                  f"per row: start-up, model loading, crop, Whisper, sampling, decode, H.264/AAC encode. Artefacts: {work_root}")
    if args.json:
        args.json.write_text(json.dumps({"quick": args.quick, "steps": steps, "threads": args.threads, "rows": results,
                                         "complete": True}, indent=2, default=float) + "\n")
    if not args.keep:
        shutil.rmtree(work_root, ignore_errors=True)


def print_table(console, results: dict, quick: bool, steps, threads: int) -> None:
    """Metrics (with the default row's floor and ceiling), costs, and each lever's change vs the default."""
    from rich.table import Table

    from talk.evaluation.results import METRICS

    ref = results["default"]
    keys = [k for k in SHOWN if k in ref["metrics"]] + sorted(
        k for k in ref["metrics"] if k not in SHOWN and isinstance(ref["metrics"][k], (int, float)))
    table = Table(title=f"denoiser levers vs the shipped default, same run ({'quick: ' if quick else ''}"
                        f"{steps or 'params.yaml'} train steps, {threads} threads)")
    table.add_column("figure")
    table.add_column("floor", justify="right")
    table.add_column("ceiling", justify="right")
    for name in results:
        table.add_column(name if name == "default" else f"{name} (Δ)", justify="right")

    def fmt(v) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"

    def line(label, get, floor="", ceil="", ratio=False):
        cells = [label, floor, ceil]
        d = get(ref)
        for name, r in results.items():
            v = get(r)
            if name == "default" or v is None or d is None:
                cells.append(fmt(v))
            else:
                cells.append(f"{fmt(v)} ({v / d:.2f}x)" if ratio else f"{fmt(v)} ({v - d:+.3f})")
        table.add_row(*cells)

    for k in keys:
        line(f"{METRICS.get(k, (k,))[0]}", lambda r, k=k: r["metrics"].get(k), fmt(ref["floor"].get(k)), fmt(ref["real"].get(k)))
    line("val loss (train_diffusion)", lambda r: r["val_loss"])
    line("train wall s", lambda r: r["train_s"], ratio=True)
    line("train peak RSS MB", lambda r: r["train_rss_mb"], ratio=True)
    line("evaluate wall s", lambda r: r["eval_s"], ratio=True)
    line("talk render frames/s (end to end)", lambda r: r["render_fps"], ratio=True)
    line("talk render peak RSS MB", lambda r: r["render_rss_mb"], ratio=True)
    console.print(table)


if __name__ == "__main__":
    main()
