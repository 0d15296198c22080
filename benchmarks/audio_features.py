"""Benchmark: Whisper feature extraction speed (seconds of audio per wall second) and peak RSS.

Each method runs in a fresh child process (so its peak RSS is its own) on the same clips of real
speech (the repo's fixture, tiled with varying gain): crop-like 4 s clips, 20 s clips and one 70 s
clip. Methods:
- ``log-mel``: ``whisper.log_mel_spectrogram`` alone (the floor: no encoder at all);
- ``stock``: the stock encoder per 30 s window, each clip zero-padded to 30 s (what whisper / HF do),
  last state only;
- ``ours``: ``encode_audio`` (all states, windows as long as the audio, 5 s context for long clips);
- ``ours-bf16``: the same under bfloat16 autocast (``audio_features.precision: bfloat16``);
- ``ours-padded``: ``encode_audio(pad_windows=True)`` (stock-identical states, all layers).
Ratios are against ``stock`` measured in the same run. "per CPU-s" = audio seconds per second of
process CPU time (all threads): a figure that a loaded machine disturbs less than wall time.

    .venv/bin/python benchmarks/audio_features.py [--threads 2] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

METHODS = ("log-mel", "stock", "ours", "ours-bf16", "ours-padded")
WORKLOADS = {"4 s x 10": (4.0, 10), "20 s x 2": (20.0, 2), "70 s x 1": (70.0, 1)}


def clips(seconds: float, count: int):
    import numpy as np

    from talk.media import io as media

    speech = media.read_audio(ROOT / "tests" / "fixtures" / "speech_radio_3s2.wav")
    gains = np.linspace(0.5, 1.0, 7, dtype=np.float32)
    tiles = int(np.ceil(seconds * count / (len(speech) / media.AUDIO_RATE))) + 1
    audio = np.concatenate([speech * gains[i % 7] for i in range(tiles)])
    n = int(seconds * media.AUDIO_RATE)
    return [audio[i * n : (i + 1) * n] for i in range(count)]


def child(method: str, threads: int, repeats: int, device: str, cache: str) -> dict:
    import numpy as np
    import torch
    import whisper

    from talk.audio.features import encode_audio
    from talk.audio.whisper_ckpt import load_whisper

    torch.set_num_threads(threads)
    model = load_whisper("tiny.en", cache, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def one(audio: np.ndarray) -> None:
        n_video = len(audio) // 640
        if method == "log-mel":
            whisper.log_mel_spectrogram(torch.from_numpy(audio), device=device)
        elif method == "stock":
            with torch.inference_mode():
                for s in range(0, len(audio), whisper.audio.N_SAMPLES):
                    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(audio[s:])), device=device)
                    model.encoder(mel[None]).cpu()
        else:
            precision = "bfloat16" if method == "ours-bf16" else "float32"
            encode_audio(audio, n_video, model, pad_windows=method == "ours-padded", precision=precision)

    out = {}
    for name, (seconds, count) in WORKLOADS.items():
        batch = clips(seconds, count)
        one(batch[0])  # warm-up
        times, cpu = [], []
        for _ in range(repeats):
            sync()
            t, c = time.perf_counter(), time.process_time()
            for audio in batch:
                one(audio)
            sync()
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        out[name] = {"audio_s": seconds * count, "wall_s": float(np.median(times)), "cpu_s": float(np.median(cpu))}
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the target machine has 2 cores)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per workload (median reported)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--cache", default=None, help="converted-checkpoint cache (default: a temp folder)")
    ap.add_argument("--json", default=None, help="also write the raw figures to this file")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.threads, args.repeats, args.device, args.cache)))
        return

    from rich.console import Console
    from rich.table import Table

    cache = args.cache or tempfile.mkdtemp(prefix="talk_bench_")
    results = {}
    for method in METHODS:
        cmd = [sys.executable, __file__, "--child", method, "--threads", str(args.threads),
               "--repeats", str(args.repeats), "--device", args.device, "--cache", cache]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[method] = json.loads(proc.stdout.strip().splitlines()[-1])

    import torch

    table = Table(title=f"audio features: x real time ({args.device}, {args.threads} torch threads, "
                        f"median of {args.repeats}; {os.cpu_count()} cores, torch {torch.__version__})")
    table.add_column("method")
    for name in WORKLOADS:
        table.add_column(name, justify="right")
    table.add_column("all", justify="right")
    table.add_column("vs stock (all)", justify="right")
    table.add_column("per CPU-s (all)", justify="right")
    table.add_column("peak RSS", justify="right")
    total = lambda r: sum(r[n]["audio_s"] for n in WORKLOADS) / sum(r[n]["wall_s"] for n in WORKLOADS)  # noqa: E731
    per_cpu = lambda r: sum(r[n]["audio_s"] for n in WORKLOADS) / sum(r[n]["cpu_s"] for n in WORKLOADS)  # noqa: E731
    for method, r in results.items():
        cells = [f"{r[n]['audio_s'] / r[n]['wall_s']:.0f}x" for n in WORKLOADS]
        table.add_row(method, *cells, f"{total(r):.0f}x", f"{total(r) / total(results['stock']):.2f}",
                      f"{per_cpu(r):.0f}x", f"{r['peak_rss_mb']:.0f} MB")
    Console().print(table)
    raw = json.dumps({"threads": args.threads, "device": args.device, "results": results}, indent=1)
    if args.json:
        Path(args.json).write_text(raw + "\n")
    else:
        print(raw)


if __name__ == "__main__":
    main()
