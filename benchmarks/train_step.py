"""Benchmark: denoiser training-step time against its FLOP floor, samples/s and peak RSS.

The default profile's denoiser (params.yaml ``model``; latents of model.image_size / the VAE's
downsampling, Whisper-tiny windows, the Emotion Bank of ``model.bank``) at the stage's batch size:

- ``train_diffusion``: one step = forward + backward + AdamW + EMA of the denoising objective
  (condition dropout, min-SNR weights) — what `talk train-diffusion` repeats;
- ``finetune_disc``: one step of the fine-tuning objective (denoising forward/backward plus the
  frozen judge's features-only forward/backward through x̂0);
- ``sample``: one guided sampling step (3 branches batched: nothing / ref / ref+audio+emotion).

The floor is the step's counted FLOPs (``torch.utils.flop_counter.FlopCounterMode``: matmuls,
convolutions, attention) divided by the fp32 matmul rate measured in the same run (2048² @ 2048²);
``achieved`` = floor / measured time. Each workload runs in its own child process (own peak RSS).

    .venv/bin/python benchmarks/train_step.py [--threads 2] [--steps 5] [--batch 16] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORKLOADS = ("train_diffusion", "finetune_disc", "sample")


def matmul_rate(device: str, n: int = 2048, repeats: int = 5) -> float:
    """Measured fp32 FLOP/s of an n x n matmul (best of ``repeats``)."""
    import torch

    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    a @ b
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def build(batch: int, device: str):
    """The default-profile denoiser, a random batch of its shapes, and the stage objects."""
    import torch

    from talk.artifacts.denoiser import build_denoiser
    from talk.artifacts.prior import ClipEmbeddings
    from talk.core import params as P
    from talk.models.emotion_bank import EmotionBank
    from talk.training.diffusion import Objective, make_spec

    params = P.load(ROOT / "params.yaml")
    m = params.model
    side = m.image_size // m.vae.downsampling()
    c, f, k = m.vae.latent_channels, m.target_frames, m.audio_window
    layers, dim = m.prior.audio_layers, m.prior.audio_dim
    shapes = {"ref": (c, side, side), "target": (f, c, side, side), "motion": (m.motion_frames, c, side, side),
              "audio": (f, k, layers, dim)}
    style_dim = m.prior.emb_dim if "style" in m.prior.heads else 0
    torch.manual_seed(0)
    spec = make_spec(m, shapes, m.bank, style_dim)
    model = build_denoiser(spec, EmotionBank(m.bank)).to(device)
    g = torch.Generator().manual_seed(0)
    b = {k: torch.randn((batch, *s), generator=g).to(device) for k, s in shapes.items()}
    b["clip_id"] = [f"clip{i % 4}" for i in range(batch)]
    b["emotion"] = torch.tensor([i % 8 for i in range(batch)], device=device)
    b["level"] = torch.tensor([1 + i % 3 for i in range(batch)], device=device)

    class Emb(ClipEmbeddings):  # four clips' Gaussians, no file
        def __init__(self):
            import numpy as np

            self.path = Path("<benchmark>")
            self.index = {f"clip{i}": i for i in range(4)}
            r = np.random.default_rng(0)
            self.mu = r.normal(size=(4, m.bank.emb_dim)).astype("float32")
            self.logvar = np.full((4, m.bank.emb_dim), -2.0, "float32")
            self.style_mu = r.normal(size=(4, style_dim)).astype("float32") if style_dim else None
            self.style_logvar = np.full((4, style_dim), -2.0, "float32") if style_dim else None

    return params, model, b, Emb(), Objective


def child(workload: str, threads: int, steps: int, batch: int, device: str) -> dict:
    import copy

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from talk.models.denoiser import make_schedule
    from talk.models.diffusion import KarrasDenoiser
    from talk.models.discriminator import EmotionDiscriminator
    from talk.models.sampling import GuidedDenoiser
    from talk.training.discriminator import FinetuneObjective
    from talk.training.trainer import EMA, generator

    torch.set_num_threads(threads)
    params, model, b, emb, Objective = build(batch, device)
    cfg = params.train_diffusion if workload != "finetune_disc" else params.finetune_disc
    schedule = make_schedule(model.spec).to(device)
    objective = Objective(params.train_diffusion.objective, schedule, emb, style=model.cond.style is not None)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    n_params = sum(p.numel() for p in model.parameters())

    if workload == "sample":
        model.eval().requires_grad_(False)  # (views of parameters made under no_grad confuse the FLOP counter)
        guided = GuidedDenoiser(KarrasDenoiser(model, schedule), {"ref": 1.5, "audio": 2.0, "emotion": 2.0})
        cond = objective.conditions(b, generator(0, device), device, drop=False)
        cond.pop("keep")
        x, sigma = torch.randn_like(b["target"]) * 3, torch.full((batch,), 3.0, device=device)

        def step(i):
            with torch.no_grad():
                guided(x, sigma, **cond)
    else:
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        ema = EMA(model, 0.99)
        if workload == "finetune_disc":
            judge_net = copy.deepcopy(model).eval().requires_grad_(False)
            disc = EmotionDiscriminator(params.model.discriminator, model.feature_channels).to(device).requires_grad_(False)
            loss_fn = FinetuneObjective(objective, judge_net, disc, cfg, params.model.discriminator.classes)
        else:
            loss_fn = objective

        def step(i):
            result = loss_fn(model, b, generator(i, device), i)
            opt.zero_grad(set_to_none=True)
            result.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            ema.update(model, i)

    step(0)  # warm-up
    with FlopCounterMode(display=False) as counter:
        step(1)
    flops = counter.get_total_flops()
    rate = matmul_rate(device)
    sync()
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        step(2 + i)
        sync()
        times.append(time.perf_counter() - t0)
    t = sorted(times)[len(times) // 2]
    floor = flops / rate
    return {
        "workload": workload,
        "batch": batch,
        "params_M": round(n_params / 1e6, 2),
        "GFLOP_per_step": round(flops / 1e9, 2),
        "matmul_GFLOPs": round(rate / 1e9, 1),
        "step_s": round(t, 4),
        "floor_s": round(floor, 4),
        "achieved": round(floor / t, 3),
        "samples_per_s": round(batch / t, 1),
        "peak_rss_MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "threads": threads,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    ap.add_argument("--batch", type=int, default=0, help="0: the stage's batch_size from params.yaml")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", choices=WORKLOADS, default=None)
    ap.add_argument("--child", choices=WORKLOADS, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        batch = args.batch
        if not batch:
            from talk.core import params as P

            p = P.load(ROOT / "params.yaml")
            batch = (p.finetune_disc if args.child == "finetune_disc" else p.train_diffusion).loop.batch_size
        print(json.dumps(child(args.child, args.threads, args.steps, batch, args.device)))
        return
    rows = []
    for w in [args.only] if args.only else WORKLOADS:
        cmd = [sys.executable, __file__, "--child", w, "--threads", str(args.threads), "--steps", str(args.steps),
               "--batch", str(args.batch), "--device", args.device]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if out.returncode:
            sys.exit(out.stderr)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"denoiser steps vs FLOP floor ({args.device}, {args.threads} threads)")
    keys = list(rows[0])
    for k in keys:
        table.add_column(k, justify="right")
    for r in rows:
        table.add_row(*(str(r[k]) for k in keys))
    Console(width=200).print(table)
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
