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

    .venv/bin/python benchmarks/sync.py [--threads 2] [--steps 5]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    ap.add_argument("--child", choices=WORKLOADS, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
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
