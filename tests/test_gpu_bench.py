"""benchmarks/gpu.py (issue 18) cannot rot: its --tiny mode runs every section on the CPU through the
project's code paths, and the figures it prints are the ones it measured."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.py"


def _numbers(rows):
    return [v for r in rows for k, v in r.items() if isinstance(v, float)]


def test_tiny_run_measures_every_section(tmp_path):
    out = tmp_path / "gpu.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--threads", "1", "--json", str(out)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "--tiny (CPU smoke run: NOT GPU figures)" in run.stdout
    res = json.loads(out.read_text())
    assert res["tiny"] is True and res["device"] == "CPU" and res["torch"]
    # the full profile's backbone is SVD-xt's architecture but for its wider conv_in (reference + motion latents)
    assert set(res["backbone_vs_svd_xt"]) <= {"in_channels", "sample_size"}
    render = {r["what"].split(":")[0]: r for r in res["render"]}
    assert render["(a) DICE-Talk"]["x (a) time"] == 1.0 and render["(a) DICE-Talk"]["denoiser rows per window"] == 6 * 3
    b = render["(b) full profile"]
    # 4 tiny steps, guided on the middle ones (3 branches), plain on the rest: fewer forwards than (a)
    assert b["denoiser rows per window"] == 8 and 0 < b["x (a) time"] < 1
    assert len(res["per_frame"]) == 3 and all(r["s_per_frame"] > 0 for r in res["per_frame"])
    assert {(r["cap_GB"], r["checkpointing"]) for r in res["train"]} == {(c, k) for c in (24, 40, 80) for k in (True, False)}
    assert all(r["steps_per_s"] > 0 and 0 < r["x matmul rate"] for r in res["train_runs"])
    assert [r["x stock"] for r in res["audio"]][0] == 1.0 and res["crop_align"][1]["out frames"] == 25
    assert "dlib" in res["crop_align_detector"] or "insightface" in res["crop_align_detector"]
    nums = _numbers(res["render"] + res["per_frame"] + res["train_runs"] + res["audio"] + res["crop_align"])
    assert nums and all(math.isfinite(v) and v >= 0 for v in nums)


def test_without_cuda_the_full_run_is_one_line_exit_2():
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here: the full run is the benchmark itself")
    run = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1 and "--tiny" in run.stderr
