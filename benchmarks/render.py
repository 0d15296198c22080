"""Benchmark: `talk render` speed on the default profile (goal: >= 25 frames/s on 2 CPU cores).

Models of the default profile's sizes (params.yaml ``model``): the trained artefacts with
``--artifacts DIR`` (``DIR/vae``, ``DIR/prior``, ``DIR/finetune_disc`` or ``DIR/diffusion``), else
untrained stand-ins built from the real classes (speed does not depend on the weights). Whisper is
``audio_features.whisper`` (tiny.en). Input: the demo portrait (detected and cropped) and the demo
speech tiled to ``--seconds``. All in one run, same threads:

- ``talk render`` end to end, the figure a user sees: one ``talk render --image --audio --out``
  process, frames per wall second of the whole process (interpreter and library start-up, model
  and Whisper loading, face crop + VAE encode, Whisper features, sampling with guidance, VAE
  decode, H.264/AAC encode and mux), with the start-up beside it (a process that only imports
  talk and loads the pipeline: models, Whisper);
- ``render`` in-process (models already loaded, warmed up): ``TalkPipeline.__call__`` (crop +
  encode, Whisper, sampling with guidance, VAE decode; no file written), frames per wall second;
  its parts timed separately; and ``render_to_file`` (+ H.264/AAC encode);
- baselines: the VAE decoder alone on the same number of latents, and ONE denoiser forward per frame
  (batch 1, no guidance, a single step: the floor of any frame-by-frame diffusion renderer);
- the default profile's choices against alternatives: autoregressive (window 1), more steps;
- batched guidance: one forward with every branch stacked on the batch vs one forward per branch,
  on one window (the default scales' branches, and all four branches);
- peak RSS of the process.

    .venv/bin/python benchmarks/render.py [--threads 2] [--seconds 4] [--artifacts artifacts] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn, repeat: int = 1):
    """(best wall seconds, last result) of ``repeat`` calls."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=4.0, help="s of speech rendered")
    ap.add_argument("--artifacts", type=Path, default=None, help="trained artefacts folder (default: stand-ins)")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="params override section.key=value")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import numpy as np
    import torch
    from rich.console import Console
    from rich.table import Table

    from talk.core import params as P
    from talk.inference import frames, pipeline, schedules
    from talk.media import io as media
    from talk.models.sampling import guidance_branches

    torch.set_num_threads(args.threads)
    console = Console(width=150)
    tmp = tempfile.TemporaryDirectory(prefix="talk-render-bench-")
    params = P.load(args.params, args.sets)
    if args.artifacts is not None:
        root = args.artifacts
        den = "finetune_disc" if (root / "finetune_disc").is_dir() else "diffusion"
        arts = {"vae": root / "vae", "prior": root / "prior", den: root / den}
        sets = [f"render.denoiser={den}"]
        what = f"trained artefacts in {root}"
    else:
        from render_fixture import default_profile, write_denoiser, write_prior, write_vae

        from talk.inference.settings import SamplingConfig

        s = default_profile(params)
        t = Path(tmp.name)
        af = params.audio_features  # the stand-in denoiser was "trained" with the profile's features and sampling
        audio = {"whisper": af.whisper, **af.chunking}
        sampling = SamplingConfig().override(P.to_plain(params.train_diffusion).get("sampling") or {}, "train_diffusion.sampling")
        arts = {"vae": write_vae(t / "vae", s), "prior": write_prior(t / "prior", s),
                "finetune_disc": write_denoiser(t / "finetune_disc", s, audio, sampling, params.crop_align.face)}
        sets = ["render.denoiser=finetune_disc"]
        what = "untrained stand-ins of the default profile's sizes"
    params = P.load(args.params, [*args.sets, *sets, *(f"paths.{k}={v}" for k, v in arts.items())])
    cfg = params.render
    pipe = pipeline.TalkPipeline.from_params(params, device="cpu")
    spec, smp, loop = pipe.spec, pipe.settings.sampling, pipe.settings.loop
    n_params = sum(p.numel() for p in pipe.denoiser.parameters())
    console.print(f"[bold]render benchmark[/]: {what}; {args.threads} threads; image {pipe.image_size} px, "
                  f"latent {spec.latent_channels}x{spec.latent_size}², denoiser {n_params / 1e6:.2f} M params "
                  f"({spec.denoiser.backbone}); steps {smp.steps} {smp.sampler}, {loop.schedule} schedule, window {loop.window}, "
                  f"guidance ref/audio/emotion {smp.guidance_ref}/{smp.guidance_audio}/{smp.guidance_emotion}")

    speech = frames.load_speech(params.paths.sources / cfg.demo_audio)
    reps = int(np.ceil(args.seconds * media.AUDIO_RATE / len(speech)))
    audio = np.tile(speech, reps)[: int(args.seconds * media.AUDIO_RATE)]
    n = frames.frame_count(len(audio))
    image = params.paths.sources / cfg.demo_image
    rows: list[tuple[str, float, str]] = []  # (name, frames/s, note)

    # -- `talk render` as a user runs it (first: the figure the budget is about): one process, start-up to file
    import subprocess

    wav = Path(tmp.name) / "speech.wav"
    media.write_wav(wav, audio)
    e2e_mp4 = Path(tmp.name) / "e2e.mp4"
    sets_cli = [a for x in [*args.sets, *sets, *(f"paths.{k}={v}" for k, v in arts.items()), f"base.threads={args.threads}"]
                for a in ("--set", x)]
    talk = str(Path(sys.executable).with_name("talk"))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    cmd = [talk, "render", "--params", str(args.params), "--image", str(image), "--audio", str(wav), "--out", str(e2e_mp4),
           "--emotion", "happy", *sets_cli]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    t_e2e = time.perf_counter() - t0
    e2e_fps = n / t_e2e
    load = ("import time, torch; t0 = time.perf_counter(); from talk.core import params as P; from talk.inference import pipeline; "
            f"torch.set_num_threads({args.threads}); p = P.load({str(args.params)!r}, {[*args.sets, *sets, *(f'paths.{k}={v}' for k, v in arts.items())]!r}); "
            "pipeline.TalkPipeline.from_params(p, device='cpu'); print(time.perf_counter() - t0)")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", load], check=True, env=env, cwd=ROOT, capture_output=True)
    t_start = time.perf_counter() - t0

    # -- the whole render and its parts
    pipe(image, audio[: media.AUDIO_RATE], emotion="happy", show_progress=False)  # warm-up (allocators, caches)
    wall, frames = timed(lambda: pipe(image, audio, emotion="happy", show_progress=False), args.repeat)
    assert len(frames) == n
    render_fps = n / wall
    t_prep, prep = timed(lambda: pipe.prepare(image), args.repeat)
    t_whisper, feats = timed(lambda: pipe.audio_features(audio, n), args.repeat)
    z = pipe.emotion("happy")

    def sample(c=pipe.settings):
        return torch.cat([lat for _, lat in pipe.generate_latents(prep.latent, feats, n, z, None, c)])

    t_sample, lat = timed(sample, args.repeat)
    t_decode, _ = timed(lambda: pipe.decode(lat), args.repeat)
    out_mp4 = Path(tmp.name) / "out.mp4"
    t_file, _ = timed(lambda: pipe.render_to_file(out_mp4, image, audio, emotion="happy", show_progress=False), 1)

    # -- baselines measured in the same run
    from talk.models.sampling import GuidedDenoiser

    x1 = torch.randn(1, 1, spec.latent_channels, spec.latent_size, spec.latent_size)
    sigma1 = torch.full((1,), 1.0)
    cond1 = {"ref": prep.latent[None], "motion": prep.latent.expand(spec.motion_frames, *prep.latent.shape)[None] if spec.motion_frames else None,
             "audio": schedules.audio_windows(feats, [0], spec.audio_window)[None], "emotion": z[None], "style": None}
    with torch.inference_mode():
        k = min(n, 50)
        t_fwd, _ = timed(lambda: [pipe.karras(x1, sigma1, **cond1) for _ in range(k)], args.repeat)
    fwd_fps = k / t_fwd
    decode_fps = n / t_decode

    # -- alternatives to the default choices (sampling only)
    n_ar = min(n, 10)

    def sample_n(c, frames):
        return torch.cat([lat for _, lat in pipe.generate_latents(prep.latent, feats[: 2 * frames], frames, z, None, c)])

    base = pipe.settings
    t_ar, _ = timed(lambda: sample_n(base.replace(window=1, schedule="window"), n_ar), 1)
    ar_fps = n_ar / t_ar
    alts = {}
    other = "rolling" if loop.schedule == "window" else "window"
    variants = {
        f"schedule {other}": base.replace(schedule=other, sampler="euler"),
        f"{2 * smp.steps} steps": base.replace(steps=2 * smp.steps),
        "guidance on the middle half of the steps": base.replace(guidance_from=0.25, guidance_to=0.75),
        "audio and emotion scales tied (2 branches)": base.replace(guidance_emotion=smp.guidance_audio),
        "no guidance (1 branch)": base.replace(guidance_ref=1.0, guidance_audio=1.0, guidance_emotion=1.0),
    }
    for label, c in variants.items():
        t_alt, _ = timed(lambda c=c: sample(c), 1)
        alts[label] = n / t_alt

    # -- batched guidance vs one forward per branch: one rolling iteration (steps rows of 1 frame)
    #    and one 25-frame window
    order = ("ref", "audio", "emotion")
    guidance = {}
    cases = []
    for rows, frames in ((smp.steps, 1), (1, min(loop.window, n))):
        for label, scales in (("default scales", {"ref": smp.guidance_ref, "audio": smp.guidance_audio, "emotion": smp.guidance_emotion}),
                              ("all four branches", {"ref": 1.5, "audio": 2.5, "emotion": 3.5})):
            cases.append((f"{rows} x {frames} frame(s), {label}", rows, frames, scales))
    for label, nrows, W, scales in cases:
        xw = torch.randn(nrows, W, spec.latent_channels, spec.latent_size, spec.latent_size) * 3
        sw = torch.full((nrows,), 3.0)
        condw = {k: (v.expand(nrows, *v.shape[1:]) if isinstance(v, torch.Tensor) else v) for k, v in cond1.items()}
        condw["audio"] = schedules.audio_windows(feats, range(W), spec.audio_window)[None].expand(nrows, -1, -1, -1, -1)
        guided = GuidedDenoiser(pipe.karras, scales, order)
        branches = guidance_branches(scales, order)

        def separate():
            out = 0
            for keep, w in branches:
                masks = {c: torch.full((nrows,), v) for c, v in keep.items()}
                out = out + w * pipe.karras(xw, sw, keep=masks, **condw)
            return out

        with torch.inference_mode():
            t_b, yb = timed(lambda: guided(xw, sw, **condw), args.repeat + 1)
            t_s, ys = timed(separate, args.repeat + 1)
        err = float((yb - ys).abs().max())
        guidance[label] = {"branches": len(branches), "batched_s": t_b, "separate_s": t_s, "speedup": t_s / t_b, "max_abs_diff": err}

    rss = peak_rss_mb()
    rows = [
        ("talk render, end to end", e2e_fps, f"{n} frames in {t_e2e:.2f} s: start-up + load, crop, Whisper, sampling, decode, encode"),
        ("  part: process start-up + model load", 0.0, f"{t_start:.2f} s once per process (python, imports, weights, Whisper)"),
        ("render in-process (loaded, warm)", render_fps, f"{n} frames in {wall:.2f} s, no start-up, no file"),
        ("  + H.264/AAC file", n / t_file, f"render_to_file, {t_file:.2f} s"),
        ("  part: crop + VAE encode", 0.0, f"{t_prep * 1000:.0f} ms once per render"),
        ("  part: Whisper", n / t_whisper, f"{t_whisper:.2f} s"),
        ("  part: sampling", n / t_sample, f"{t_sample:.2f} s"),
        ("  part: VAE decode", decode_fps, f"{t_decode:.2f} s"),
        ("baseline: VAE decode alone", decode_fps, "same latents"),
        ("baseline: 1 denoiser forward / frame", fwd_fps, "batch 1, no guidance, 1 step"),
        ("alt: autoregressive (window 1)", ar_fps, f"{n_ar} frames, sampling only"),
        *((f"alt: {label}", fps, "sampling only") for label, fps in alts.items()),
    ]
    table = Table(title=f"render speed, {args.threads} threads (peak RSS {rss:.0f} MB)")
    for col in ("what", "frames/s", "x realtime (25 fps)", "x 1-forward baseline", "note"):
        table.add_column(col, justify="left" if col in ("what", "note") else "right")
    for name, fps, note in rows:
        table.add_row(name, f"{fps:.1f}" if fps else "-", f"{fps / 25:.2f}" if fps else "-",
                      f"{fps / fwd_fps:.2f}" if fps else "-", note)
    console.print(table)
    g = Table(title="batched guidance vs one forward per branch (rows x frames per row)")
    for col in ("case", "branches", "batched ms", "separate ms", "speedup", "max |diff|"):
        g.add_column(col, justify="left" if col == "case" else "right")
    for label, r in guidance.items():
        g.add_row(label, str(r["branches"]), f"{r['batched_s'] * 1000:.0f}", f"{r['separate_s'] * 1000:.0f}",
                  f"{r['speedup']:.2f}x", f"{r['max_abs_diff']:.1e}")
    console.print(g)
    verdict = "meets" if e2e_fps >= 25 else "misses"
    console.print(f"talk render end to end: {e2e_fps:.1f} frames/s for {n / 25:.0f} s of speech = {e2e_fps / 25:.2f}x real time "
                  f"({verdict} the 25 fps goal; budget 10: {'met' if e2e_fps >= 10 else 'missed'}); start-up + load {t_start:.2f} s")
    console.print(f"render in-process: {render_fps:.1f} frames/s = {render_fps / 25:.2f}x real time; "
                  f"{render_fps / fwd_fps:.2f}x the one-forward-per-frame baseline, "
                  f"{render_fps / decode_fps:.2f}x VAE decode alone; peak RSS {rss:.0f} MB")
    if args.json:
        result = {"threads": args.threads, "artefacts": what, "frames": n, "talk_render_fps": e2e_fps,
                  "talk_render_s": t_e2e, "startup_load_s": t_start, "render_fps": render_fps,
                  "file_fps": n / t_file, "parts_s": {"prepare": t_prep, "whisper": t_whisper, "sampling": t_sample,
                                                      "decode": t_decode},
                  "baseline_decode_fps": decode_fps, "baseline_forward_fps": fwd_fps, "autoregressive_fps": ar_fps,
                  "alternatives_sampling_fps": alts, "guidance": guidance, "peak_rss_mb": rss,
                  "settings": P.to_plain(pipe.settings)}
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    tmp.cleanup()


if __name__ == "__main__":
    main()
