"""Run every stage of the pipeline on a tiny configuration and fingerprint what each one writes.

Used to check that a refactor leaves behaviour unchanged: run it on the commit before and on the
commit after (same machine, same thread count), then compare the two fingerprints::

    python tools/pipeline_outputs.py run /tmp/before          # at the old commit
    python tools/pipeline_outputs.py run /tmp/after           # at the new commit
    python tools/pipeline_outputs.py compare /tmp/before /tmp/after

Each output file is hashed: tensors / arrays / CSVs by content, JSON and YAML after dropping
values that measure time (seconds, fps, timestamps) or name folders. ``--set`` overrides are
passed to every stage (the tiny configuration below is the default).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("sample_data", "discover", "crop_align", "audio_features", "fit_vae", "cache_latents",
          "pretrain_prior", "train_diffusion", "finetune_disc", "render", "evaluate")
TINY = [
    "base.threads=2",
    "sample_data.identities=[W001,M001,M002,W002,W003,W004]",
    "sample_data.emotions=[neutral,happy,sad,angry]",
    "sample_data.levels=[3]",
    "sample_data.utterances=1",
    "discover.min_speakers=[1,1,1]",  # 6 speakers: keep the old 4 train, 1 val, 1 test
    "sample_data.seconds=1.2",
    "fit_vae.loop.steps=30",
    "fit_vae.max_clips=8",
    "pretrain_prior.loop.steps=20",
    "train_diffusion.loop.steps=20",
    "finetune_disc.judge_steps=10",
    "finetune_disc.loop.steps=5",
    "render.emotions=[neutral,happy]",
    "render.demo_seconds=0.4",
    "evaluate.max_clips=4",
    "evaluate.max_frames=10",
]
TIMING = re.compile(r"(seconds|wall|_s$|fps|per_s|saved_at|created|time|elapsed|resolved from|path|dir$|out$)", re.I)
SKIP = re.compile(r"(\.lock$|lock\.mdb$|/live/|\.tsv$|report\.html$|\.png$)")  # timing curves, pictures of them


def _clean(obj):
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in sorted(obj.items()) if not TIMING.search(str(k))}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    if isinstance(obj, float):
        return round(obj, 6)
    return obj


def fingerprint(path: Path) -> str:
    if path.suffix == ".json":
        return hashlib.sha256(json.dumps(_clean(json.loads(path.read_text())), sort_keys=True).encode()).hexdigest()[:16]
    if path.suffix in (".yaml", ".yml"):
        import yaml

        text = path.read_text()
        return hashlib.sha256(json.dumps(_clean(yaml.safe_load(text)), sort_keys=True, default=str).encode()).hexdigest()[:16]
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def run(work: Path, sets: list[str], talk: str) -> None:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    shutil.copytree(ROOT / "data" / "sources", work / "data" / "sources")
    shutil.copy(ROOT / "params.yaml", work / "params.yaml")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1"}
    args = [a for s in sets for a in ("--set", s)]
    prints = {}
    for stage in STAGES:
        cmd = [talk, stage.replace("_", "-"), *args]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=work, env=env, check=True, stdout=subprocess.DEVNULL)
        for f in sorted((work / "data").rglob("*")) + sorted((work / "artifacts").rglob("*")):
            rel = f.relative_to(work).as_posix()
            if f.is_file() and rel not in prints and not rel.startswith("data/sources") and not SKIP.search(rel):
                prints[rel] = {"stage": stage, "hash": fingerprint(f)}
    (work / "outputs.json").write_text(json.dumps(prints, indent=1, sort_keys=True) + "\n")
    print(f"{len(prints)} files fingerprinted -> {work / 'outputs.json'}")


def compare(a: Path, b: Path) -> int:
    pa = json.loads((a / "outputs.json").read_text())
    pb = json.loads((b / "outputs.json").read_text())
    differ = 0
    for stage in STAGES:
        files = sorted({k for k, v in {**pa, **pb}.items() if v["stage"] == stage})
        same = [f for f in files if f in pa and f in pb and pa[f]["hash"] == pb[f]["hash"]]
        diff = [f for f in files if f not in same]
        differ += len(diff)
        print(f"{stage:16s} {len(same):3d} identical, {len(diff):3d} differ" + ("" if not diff else ": " + ", ".join(
            f"{f}{'' if f in pa and f in pb else (' (only before)' if f in pa else ' (only after)')}" for f in diff)))
    return 1 if differ else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("work", type=Path)
    r.add_argument("--set", action="append", default=None, help="override (repeatable); default: the tiny set")
    r.add_argument("--talk", default=str(Path(sys.executable).with_name("talk")))
    c = sub.add_parser("compare")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    a = ap.parse_args()
    if a.cmd == "run":
        run(a.work.resolve(), a.set if a.set is not None else TINY, a.talk)
        return 0
    return compare(a.before, a.after)


if __name__ == "__main__":
    sys.exit(main())
