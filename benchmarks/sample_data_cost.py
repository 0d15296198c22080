"""Cost of `talk sample-data` with many identities against the old 6-identity grid, same run.

Runs the real stage twice, each in a fresh child process (its peak RSS, workers included, is its
own), into temporary folders:

- baseline: the old default, 6 identities (W001 M001 M002 W002 W003 W004) x 8 emotions x every
  level x 2 utterances (``levels_per_identity=0``, ``utterances=2``): 288 clips;
- current: params.yaml's ``sample_data`` (every usable portrait, one level per speaker and
  emotion, rotated; the dlib face check of every portrait included in the time).

Prints per run: identities, clips, frames, portraits dropped, wall seconds, frames per second and
peak RSS, and the current/baseline ratios of wall time and clips.

    .venv/bin/python benchmarks/sample_data_cost.py [--seconds 3.0] [--json out.json]
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

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ["sample_data.identities=[W001, M001, M002, W002, W003, W004]", "sample_data.levels_per_identity=0",
            "sample_data.utterances=2"]


def run(name: str, sets: list[str], out: Path) -> dict:
    args = [str(ROOT / ".venv" / "bin" / "talk"), "sample-data"]
    for s in [*sets, f"paths.raw={out}", "sample_data.wild=false"]:
        args += ["--set", s]
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{name}: talk sample-data failed:\n{output}")
    index = pd.read_csv(out / "mead" / "index.csv")
    dropped = pd.read_csv(out / "mead" / "dropped.tsv", sep="\t")
    return {"run": name, "identities": int(index["speaker"].nunique()), "clips": len(index),
            "frames": int(index["frames"].sum()), "dropped": len(dropped), "wall_s": round(wall, 1),
            "frames_per_s": round(int(index["frames"].sum()) / wall, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=None, help="clip length for both runs (default: params.yaml's)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    extra = [] if args.seconds is None else [f"sample_data.seconds={args.seconds}"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, sets in (("baseline (6 identities, full grid)", BASELINE), ("current (params.yaml)", [])):
            rows.append(run(name, sets + extra, Path(tmp) / name.split()[0]))
            print(rows[-1], flush=True)
    base, cur = rows
    print(f"\n{'run':38s} {'ids':>4s} {'clips':>6s} {'frames':>7s} {'dropped':>7s} {'wall s':>7s} {'frames/s':>8s} {'peak RSS':>9s}")
    for r in rows:
        print(f"{r['run']:38s} {r['identities']:4d} {r['clips']:6d} {r['frames']:7d} {r['dropped']:7d} {r['wall_s']:7.1f} "
              f"{r['frames_per_s']:8.1f} {r['peak_rss_mb']:6d} MB")
    ratio = {"wall": round(cur["wall_s"] / base["wall_s"], 3), "clips": round(cur["clips"] / base["clips"], 3),
             "identities": round(cur["identities"] / base["identities"], 3)}
    print(f"current / baseline: wall {ratio['wall']:.2f}x, clips {ratio['clips']:.2f}x, identities {ratio['identities']:.1f}x")
    if args.json:
        args.json.write_text(json.dumps({"runs": rows, "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
