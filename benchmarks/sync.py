"""Benchmark: the lip-sync expert's cost — as a train_diffusion loss, and its own training step.

Workloads, each in its own child process (own peak RSS), on the default profile's shapes
(params.yaml ``model``, ``train_diffusion``, ``train_sync``; random weights, random batch):

- ``diffusion``: one train_diffusion step (forward + backward + AdamW + EMA), ``sync_weight: 0``:
  the baseline;
- ``diffusion+sync``: the same step with ``sync_weight > 0``: x̂0 decoded by the default VAE
  (random weights, the fit_vae architecture), mouths cut, scored by the expert, backward through
  the decoder. The frame backbone predicts F = 1 frame, so the expert here has
  ``train_sync.model.frames: 1`` (the 5-frame default needs target_frames >= 5);
- ``train_sync``: one step of the expert's own training at ``train_sync.loop.batch_size``.

Prints each median step time, its ratio to the baseline, and peak RSS.

``--score SPLIT``: instead, the trained expert (``paths.sync``) on the real clips of SPLIT
(``paths.crops``, ``paths.audio_features``, first ``evaluate.max_frames`` frames as evaluate
scores them, ``evaluate.sync_max_offset``): Sync-C / Sync-D (talk expert) of the clips in sync,
with their audio delayed by ``train_sync.eval_shift`` frames, and of the floor (the first frame
repeated), each with its ratio to the in-sync row, for the MEAD-layout and the wild clips apart.

    .venv/bin/python benchmarks/sync.py [--threads 2] [--steps 5]
    .venv/bin/python benchmarks/sync.py --score test
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORKLOADS = ("diffusion", "diffusion+sync", "train_sync")


def _timed(step, steps: int) -> float:
    step(0)  # warm-up
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        step(1 + i)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def child(workload: str, threads: int, steps: int) -> dict:
    import torch

    from talk.artifacts.sync import save_expert
    from talk.artifacts.vae import save_vae
    from talk.models.syncnet import SyncExpert
    from talk.models.vae import build_vae
    from talk.training.trainer import EMA, generator

    torch.set_num_threads(threads)
    from train_step import build

    params, model, b, emb, Objective = build(16, "cpu")
    if workload == "train_sync":
        from talk.training.sync import SyncObjective

        cfg = params.train_sync
        e = cfg.model
        n = cfg.loop.batch_size
        torch.manual_seed(0)
        net = SyncExpert(e).train()
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        batch = {"video": torch.randint(0, 255, (n, e.frames, 3, e.mouth_size, 2 * e.mouth_size), dtype=torch.uint8),
                 **{k: torch.randn(n, e.audio_window, e.audio_layers, e.audio_dim) for k in ("audio", "shifted", "other")}}

        def step(i):
            r = SyncObjective()(net, batch, None, i)
            opt.zero_grad(set_to_none=True)
            r.loss.backward()
            opt.step()
        batch_size = n
    else:
        from talk.models.denoiser import make_schedule
        from talk.training.sync import SyncLoss

        tcfg = params.train_diffusion
        sync_loss = None
        objective_cfg = tcfg.objective
        if workload == "diffusion+sync":
            tmp = Path(tempfile.mkdtemp())
            torch.manual_seed(1)
            vae = build_vae(params.model.vae, params.model.image_size)
            save_vae(vae, tmp / "vae")
            (tmp / "sync").mkdir()
            ecfg = dataclasses.replace(params.train_sync.model, frames=1, audio_window=params.model.audio_window)
            save_expert(SyncExpert(ecfg), tmp / "sync", {})
            sync_loss = SyncLoss(tmp / "sync", tmp / "vae", model.spec.target_frames, model.spec.audio_window, "cpu")
            objective_cfg = dataclasses.replace(objective_cfg, sync_weight=0.1)
        schedule = make_schedule(model.spec)
        objective = Objective(objective_cfg, schedule, emb, style=model.cond.style is not None, sync=sync_loss)
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        ema = EMA(model, 0.99)

        def step(i):
            r = objective(model, b, generator(i, "cpu"), i)
            opt.zero_grad(set_to_none=True)
            r.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            ema.update(model, i)
        batch_size = b["target"].shape[0]
    t = _timed(step, steps)
    return {"workload": workload, "batch": batch_size, "step_s": round(t, 4),
            "peak_rss_MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "threads": threads}


def score(split: str, threads: int) -> None:
    import numpy as np
    import torch

    from talk.core import params as P
    from talk.data.crops import clip_file, read_manifest
    from talk.evaluation.metrics.syncnet import SyncExpertMetric
    from talk.media.io import read_video

    torch.set_num_threads(threads)
    params = P.load(ROOT / "params.yaml")
    paths, ev, shift = params.paths, params.evaluate, params.train_sync.eval_shift
    t0 = time.perf_counter()
    metric = SyncExpertMetric(paths.sync, paths.audio_features, ev.sync_max_offset)
    df = read_manifest(paths.crops)
    rows: dict = {}
    for row in df[df["split"] == split].itertuples():
        frames = read_video(clip_file(paths.crops, row, "frames.mp4"))
        if ev.max_frames:
            frames = frames[: ev.max_frames]
        n = len(frames)
        audio = metric.audio(row.clip_id, n)
        group = rows.setdefault(row.subset, {"in sync": [], f"audio +{shift} frames": [], "floor (frame 0 repeated)": []})
        group["in sync"].append(metric.scores(frames, audio))
        group[f"audio +{shift} frames"].append(metric.scores(frames[shift:], audio[: 2 * (n - shift)]))
        group["floor (frame 0 repeated)"].append(metric.scores(np.repeat(frames[:1], n, 0), audio))
    print(f"expert {paths.sync}, split {split}, +-{ev.sync_max_offset} frames, {ev.max_frames or 'all'} frames per clip; "
          f"{time.perf_counter() - t0:.1f} s, peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    print(f"{'clips':<8} {'row':<26} {'n':>4} {'Sync-C':>8} {'x in sync':>9} {'Sync-D':>8} {'x in sync':>9} {'D at 0':>8} {'|offset|':>8}")
    for subset, group in rows.items():
        base = None
        for name, scores in group.items():
            c = float(np.nanmean([s["sync_c"] for s in scores]))
            d = float(np.nanmean([s["sync_d"] for s in scores]))
            d0 = float(np.nanmean([s["d0"] for s in scores]))
            off = float(np.nanmean([abs(s["offset"]) for s in scores]))
            base = base or (c, d)
            print(f"{subset:<8} {name:<26} {len(scores):>4} {c:>8.4f} {c / base[0]:>9.2f} {d:>8.4f} {d / base[1]:>9.2f} "
                  f"{d0:>8.4f} {off:>8.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    ap.add_argument("--score", default=None, metavar="SPLIT", help="score the trained expert on SPLIT's real clips")
    ap.add_argument("--child", choices=WORKLOADS, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.score:
        score(args.score, args.threads)
        return
    if args.child:
        print(json.dumps(child(args.child, args.threads, args.steps)))
        return
    rows = []
    for w in WORKLOADS:
        out = subprocess.run([sys.executable, __file__, "--child", w, "--threads", str(args.threads),
                              "--steps", str(args.steps)], capture_output=True, text=True, cwd=ROOT)
        if out.returncode:
            sys.exit(out.stderr)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = rows[0]["step_s"]
    print(f"{'workload':<16} {'batch':>5} {'step s':>8} {'x baseline':>10} {'peak RSS MB':>12}")
    for r in rows:
        print(f"{r['workload']:<16} {r['batch']:>5} {r['step_s']:>8.4f} {r['step_s'] / base:>10.2f} {r['peak_rss_MB']:>12.1f}")
    print("baseline: one train_diffusion step with sync_weight 0 (same run, same machine)")


if __name__ == "__main__":
    main()
