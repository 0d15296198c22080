"""Benchmark: the `pretrain_prior` stage at the default profile's size, on synthetic clips.

Builds ~300 labelled 3 s clips (7 speakers x 8 emotions x 3 levels, MEAD-like; 5 train / 1 val /
1 test speaker) plus a few unlabelled clips, with Whisper-tiny-shaped features (L=5, D=384),
then runs the stage with params.yaml's `model` and `pretrain_prior` sections (paths redirected
to a temporary folder). Prints wall time against the 60 s budget of the embedded profile, peak
RSS, and the emotion probe on unseen speakers against the raw-landmark baseline and chance.

    .venv/bin/python benchmarks/pretrain_prior.py [--threads 2] [--set pretrain_prior.loop.steps=100]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

BUDGET_S = 60.0  # the stage's share of the 10-15 min CPU pipeline
NOMINAL_GFLOPS_PER_THREAD = 98.0  # fp32 2048^2 matmul per thread on an idle reference machine (docs/findings.md: 98 / 195 on 1 / 2)


def matmul_gflops() -> float:
    """The machine's fp32 matmul rate right now: the baseline the stage time is read against."""
    import torch

    a = torch.randn(2048, 2048)
    a @ a
    t = time.perf_counter()
    for _ in range(3):
        a @ a
    return 3 * 2 * 2048**3 / (time.perf_counter() - t) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], help="extra params override")
    args = ap.parse_args()

    from prior_fixture import make_prior_fixture

    from talk.core import params as P
    from talk.core import runtime
    from talk.stages.pretrain_prior import run

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        speakers = {f"S{k}": "train" for k in range(5)} | {"S5": "val", "S6": "test"}
        crops, feats = make_prior_fixture(
            tmp, speakers, emotions=("neutral", "angry", "contempt", "disgusted", "fear", "happy", "sad", "surprised"),
            clips_per=2, levels=(1, 2, 3), n_frames=75, layers=5, dim=384, wild=1, strength=0.3,
        )
        t_data = time.perf_counter() - t0
        params = P.load(ROOT / "params.yaml", [
            f"paths.crops={crops}", f"paths.audio_features={feats}",
            f"paths.prior={tmp / 'prior'}", f"base.threads={args.threads}", *args.set,
        ])
        runtime.setup(params.base)
        g0 = matmul_gflops()
        t0 = time.perf_counter()
        run(params)
        wall = time.perf_counter() - t0
        gflops = (g0 + matmul_gflops()) / 2
        m = json.loads((tmp / "prior" / "metrics.json").read_text())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ep, tr = m["emotion_probe"], m["train"]
    print(f"synthetic data: {ep['n_train']} labelled train clips, built in {t_data:.1f} s")
    print(f"stage wall time {wall:.1f} s = {wall / BUDGET_S:.2f} x the {BUDGET_S:.0f} s budget "
          f"({tr['steps']} steps, {tr['seconds'] / max(tr['steps'], 1):.3f} s/step training, best step {tr['best_step']}); "
          f"peak RSS {rss:.0f} MB; threads {args.threads}")
    nominal = NOMINAL_GFLOPS_PER_THREAD * args.threads
    print(f"baseline: fp32 matmul {gflops:.0f} GFLOP/s on {args.threads} thread(s) in this run ({gflops / nominal:.2f} x "
          f"the idle reference): stage time scaled to an idle machine ~{wall * gflops / nominal:.0f} s")
    print(f"emotion probe on unseen speakers: both {ep['both']}, audio {ep['audio']}, video {ep['video']}; "
          f"raw-landmark baseline {ep['landmark_baseline']}; chance {ep['chance']}")
    idm = m["identity"]
    print(f"speaker probe: emotion head {idm.get('emotion_head')}, style head {idm.get('style_head')}, chance {idm['chance']}")
    print(f"codebook: perplexity {m['codebook']['perplexity']}, used {m['codebook']['used_codes']}/{m['codebook']['n_codes']}")


if __name__ == "__main__":
    main()
