"""Benchmark: how much of a face the VAE round trip keeps, on faces it never saw -- the ceiling of
every render (issue "Renders keep the person").

Fits two VAEs with the real `fit_vae` stage on the pipeline's crops (run `dvc repro crop_align`
first), each in its own process: the shipped default (params.yaml) and the baseline, the old
16x16x4 diffusers AutoencoderKL (``model.vae.kind=kl``, 4 latent channels, no colour
augmentation, 800 steps). Then measures both round trips on

- ``val``: crops of the val identities (fit_vae's own metrics set),
- ``test``: crops of the test identities,
- ``wild``: crops of the real talking videos (not in the VAE's training set unless split train),
- ``portraits``: data/sources/heldout/, real portraits no stage uses, cropped as `talk render` does,

printing PSNR, SSIM, CIELAB ΔE over the face, Laplacian sharpness ratio and dlib-128 identity
distance per set, the targets, each fit's wall time and peak RSS, and the machine's matmul rate in
the same run (the baseline the times are read against).

    .venv/bin/python benchmarks/vae_quality.py [--threads 2] [--set fit_vae.loop.steps=400] [--baseline-steps 800]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

TARGETS = {"psnr": (">=", 27.0), "ssim": (">=", 0.88), "delta_e": ("<=", 3.0), "sharpness": (">=", 0.6),
           "identity": ("<=", 0.35)}
BASELINE = ["model.vae.kind=kl", "model.vae.latent_channels=4", "fit_vae.colour=0.0", "fit_vae.spectrum=0.0", "fit_vae.loop.steps=800",
            "fit_vae.loop.lr=0.002"]  # the old default: 16x16x4 AutoencoderKL, L1 + edge loss
PATCH = ["model.vae.kind=patch", "model.vae.latent_channels=48", "fit_vae.spectrum=1.0", "fit_vae.colour=1.0",
         "fit_vae.loop.steps=150", "fit_vae.loop.lr=0.0002"]  # the PatchAutoencoder (not yet the shipped default: docs/findings.md)
PER_SET = 48  # frames scored per set


def matmul_gflops() -> float:
    import torch

    a = torch.randn(1024, 1024)
    a @ a
    t = time.perf_counter()
    for _ in range(5):
        a @ a
    return 5 * 2 * 1024**3 / (time.perf_counter() - t) / 1e9


def fit(out: Path, overrides: list[str], threads: int) -> dict:
    """Run `talk fit-vae` into ``out`` in a child process; wall time and peak RSS (polled)."""
    import psutil

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    cmd = [str(Path(sys.executable).parent / "talk"), "fit-vae", "--set", f"paths.vae={out}",
           "--set", f"base.threads={threads}"] + [a for o in overrides for a in ("--set", o)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ps, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(0.25)
    err = proc.stderr.read()
    if proc.returncode:
        raise SystemExit(f"fit-vae failed ({' '.join(overrides)}):\n{err[-2000:]}")
    return {"seconds": time.perf_counter() - t0, "rss_mb": peak / 2**20,
            "metrics": json.loads((out / "metrics.json").read_text())}


def eval_sets(params) -> dict[str, np.ndarray]:
    """name -> (N, S, S, 3) uint8 frames the VAEs are scored on."""
    from talk.core.errors import TalkError
    from talk.data.crops import clip_file, read_frames, read_manifest
    from talk.inference.frames import load_image
    from talk.media.faces import Aligner

    crops, size = Path(params.paths.crops), params.model.image_size
    df = read_manifest(crops)
    g = np.random.default_rng(0)
    sets = {}
    wild = df["subset"] == "wild"
    kinds = {"val": (df["split"] == "val") & ~wild, "test": (df["split"] == "test") & ~wild,
             "wild": wild & (df["split"] != "train")}  # real talking videos the VAE never trained on
    for name, sel in kinds.items():
        rows = df[sel]
        if len(rows) == 0:
            continue
        per = max(1, -(-PER_SET // len(rows)))
        frames = [read_frames(clip_file(crops, r, "frames.mp4"),
                              np.sort(g.choice(int(r.n_frames), min(per, int(r.n_frames)), replace=False)), size)
                  for r in rows.itertuples(index=False)]
        sets[name] = np.concatenate(frames)[:PER_SET]
    held = sorted(p for p in (ROOT / "data" / "sources" / "heldout").glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if held:
        aligner = Aligner.from_params(params)
        out = []
        for p in held:
            try:
                out.append(aligner.align_image(load_image(p))[0])
            except TalkError as e:
                print(f"  {p.name}: skipped ({e})")
        if out:
            sets["portraits"] = np.stack(out)
    return sets


def score(vae_dir: Path, sets: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    from talk.artifacts.vae import load_vae
    from talk.training.vae import reconstruction_metrics

    vae, _, _ = load_vae(vae_dir)
    return {name: reconstruction_metrics(vae, frames, 16) for name, frames in sets.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], help="override for the default fit (section.key=value)")
    ap.add_argument("--baseline-steps", type=int, default=800, help="steps of the old AutoencoderKL (its shipped 800)")
    ap.add_argument("--keep", type=Path, help="keep the fitted VAEs in this folder")
    args = ap.parse_args()

    import torch

    from talk.core import params as P

    torch.set_num_threads(args.threads)
    params = P.load(ROOT / "params.yaml", args.set)
    if not (Path(params.paths.crops) / "manifest.csv").is_file() and not list(Path(params.paths.crops).glob("manifest*")):
        raise SystemExit(f"no crops at {params.paths.crops}: run `dvc repro crop_align` first")
    sets = eval_sets(params)
    print("scored sets: " + ", ".join(f"{k} {len(v)} frames" for k, v in sets.items()))

    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        g0 = matmul_gflops()
        runs = {
            "old 16x16x4 AutoencoderKL": fit(root / "baseline", BASELINE + [f"fit_vae.loop.steps={args.baseline_steps}"], args.threads),
            "default (params.yaml)": fit(root / "default", PATCH + args.set, args.threads),
        }
        gflops = (g0 + matmul_gflops()) / 2
        scores = {name: score(root / ("baseline" if name.startswith("old") else "default"), sets) for name in runs}

    print(f"\nmachine: fp32 1024^2 matmul {gflops:.0f} GFLOP/s on {args.threads} thread(s) in this run (the baseline of the times)")
    for name, run in runs.items():
        m = run["metrics"]
        print(f"{name}: latent {tuple(m['latent_shape'])}, {m['parameters'] / 1e6:.2f} M params, {m['steps']} steps, "
              f"fit {run['seconds']:.0f} s, peak RSS {run['rss_mb']:.0f} MB")
    cols = list(TARGETS)
    print(f"\n{'set':<10} {'vae':<28} " + " ".join(f"{c:>10}" for c in cols))
    print(f"{'target':<10} {'':<28} " + " ".join(f"{o + str(v):>10}" for o, v in TARGETS.values()))
    for s in sets:
        for name in runs:
            r = scores[name][s]
            print(f"{s:<10} {name[:28]:<28} " + " ".join(f"{r[c]:>10.3f}" for c in cols))
    base, new = runs["old 16x16x4 AutoencoderKL"], runs["default (params.yaml)"]
    print(f"\nfit time default / old: {new['seconds'] / base['seconds']:.2f}x; "
          f"peak RSS default / old: {new['rss_mb'] / base['rss_mb']:.2f}x")
    for s in sets:
        a, b = scores["old 16x16x4 AutoencoderKL"][s], scores["default (params.yaml)"][s]
        print(f"{s}: PSNR {b['psnr'] - a['psnr']:+.2f} dB, ΔE {b['delta_e'] / a['delta_e']:.2f}x, "
              f"sharpness {b['sharpness'] / a['sharpness']:.2f}x, identity {b['identity'] / a['identity']:.2f}x vs old")


if __name__ == "__main__":
    main()
