"""The lip-sync expert: model, stage `train_sync`, Sync-C / Sync-D (talk expert), the denoiser loss."""

from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from sync_fixture import TINY_EXPERT, make_sync_crops
from talk.core import params as P
from talk.core.errors import TalkError
from talk.models.syncnet import SyncExpert, SyncExpertConfig, expert_sync_scores, mouth_crops

STEPS = 300


def tiny(**kw) -> SyncExpertConfig:
    return SyncExpertConfig(**{**TINY_EXPERT, **kw})


def test_expert_shapes_unit_embeddings_and_gradients_in_both_towers():
    torch.manual_seed(0)
    cfg = tiny()
    net = SyncExpert(cfg)
    video = torch.rand(3, cfg.frames, 3, cfg.mouth_size, 2 * cfg.mouth_size)
    audio = torch.randn(3, cfg.audio_window, cfg.audio_layers, cfg.audio_dim)
    v, a = net.embed_video(video), net.embed_audio(audio)
    assert v.shape == a.shape == (3, cfg.emb_dim)
    assert torch.allclose(v.norm(dim=-1), torch.ones(3), atol=1e-5)
    d = SyncExpert.distance(v, a)
    assert d.shape == (3,) and bool(((d >= 0) & (d <= 2 + 1e-5)).all())
    net.logit(v, a).sum().backward()
    for name in ("visual.0.weight", "audio_proj.weight", "log_scale", "bias"):
        g = dict(net.named_parameters())[name].grad
        assert g is not None and float(g.abs().sum()) > 0, name
    frames = torch.rand(2, 4, 3, 32, 32)
    assert mouth_crops(frames, 16).shape == (2, 4, 3, 16, 32)
    assert torch.allclose(mouth_crops(frames, 16), frames[..., 16:, :])  # 32 px: the lower half as it is


def test_config_rejects_even_windows():
    from talk.core.params import parse

    with pytest.raises(TalkError, match="odd"):
        parse(SyncExpertConfig, {"frames": 4}, "train_sync.model")


def test_save_load_round_trip_and_damaged_file(tmp_path):
    from talk.artifacts.sync import load_expert, save_expert

    torch.manual_seed(0)
    net = SyncExpert(tiny()).eval()
    save_expert(net, tmp_path, {"trained": {"stage": "test"}})
    back = load_expert(tmp_path)
    x = torch.rand(2, 5, 3, 16, 32)
    assert torch.equal(net.embed_video(x), back.embed_video(x))
    assert not any(p.requires_grad for p in back.parameters())
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(TalkError, match="model.safetensors.*train-sync"):
        load_expert(tmp_path)


# --------------------------------------------------------------------------------------------
# The stage on a fixture whose mouths follow a per-clip signal the features carry


def stage_params(tmp: Path, crops: Path, feats: Path, out: Path, **over) -> P.Params:
    from talk.stages.train_sync import Config

    cfg = {"model": TINY_EXPERT, "max_offset": 3, "eval_shift": 8, "val_windows": 200,
           "loop": {"steps": STEPS, "batch_size": 16, "lr": 0.003, "warmup_steps": 10, "checkpoint_every": 150}, **over}
    sections = {
        "base": P.parse(P.Base, {"threads": 1}, "base"),
        "paths": P.parse(P.Paths, {"cache": str(tmp / "cache"), "crops": str(crops), "audio_features": str(feats),
                                   "sync": str(out)}, "paths"),
        "train_sync": P.parse(Config, cfg, "train_sync"),
    }
    return P.Params(source=tmp / "params.yaml", sections=types.MappingProxyType(sections))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from talk.core import runtime
    from talk.stages.train_sync import run

    tmp = tmp_path_factory.mktemp("sync")
    crops, feats = make_sync_crops(tmp)
    params = stage_params(tmp, crops, feats, tmp / "sync")
    runtime.setup(params.base)
    run(params)
    return types.SimpleNamespace(tmp=tmp, crops=crops, feats=feats, out=tmp / "sync", params=params)


def test_stage_writes_its_files_and_separates_in_sync_from_shifted(trained):
    out = trained.out
    for name in ("config.json", "model.safetensors", "metrics.json", "params.yaml"):
        assert (out / name).is_file(), name
    assert any((out / "checkpoints").iterdir())
    m = json.loads((out / "metrics.json").read_text())
    assert m["steps"] == STEPS and m["train_clips"] == 8 and m["val"]["clips"] == 3
    val = m["val"]
    assert val["accuracy"] > 0.68, val  # chance 0.5
    assert val["rank_shift"] > 0.68, val  # in-sync audio closer than the same clip's shifted audio
    sync = m["val_sync"]
    assert sync["in_sync"]["sync_c"] > sync["shifted"]["sync_c"]
    assert sync["in_sync"]["sync_d"] < sync["shifted"]["sync_d"]


def test_stage_is_deterministic_under_its_seed(trained, tmp_path):
    from talk.stages.train_sync import run

    run(stage_params(tmp_path, trained.crops, trained.feats, tmp_path / "sync"))
    a = json.loads((trained.out / "metrics.json").read_text())
    b = json.loads((tmp_path / "sync" / "metrics.json").read_text())
    assert a["val"] == b["val"] and a["val_sync"] == b["val_sync"]
    # re-running the finished stage resumes at its last step: nothing trained, the same expert
    run(stage_params(tmp_path, trained.crops, trained.feats, tmp_path / "sync"))
    c = json.loads((tmp_path / "sync" / "metrics.json").read_text())
    assert c["steps_run"] == 0 and c["val"] == b["val"]


def test_sync_metric_scores_in_sync_above_shifted_and_still(trained):
    """Sync-C (talk expert) higher, Sync-D at offset 0 lower, for a val clip in sync than for the
    same frames with the audio delayed past the offset search, or for a frozen mouth."""
    from talk.evaluation.metrics.syncnet import SyncExpertMetric
    from talk.media.io import read_video

    metric = SyncExpertMetric(trained.out, trained.feats, max_offset=3)
    wins = 0
    for clip_id in ("c08", "c09", "c10"):
        frames = read_video(trained.crops / clip_id / "frames.mp4")
        audio = metric.audio(clip_id, len(frames))
        ok = metric.scores(frames, audio)
        shifted = metric.scores(frames[8:], audio[: 2 * (len(frames) - 8)])
        still = metric.scores(np.repeat(frames[:1], len(frames), 0), audio)
        # a frozen mouth has one video embedding: its curve is flat but for which windows each offset averages
        wins += ok["sync_c"] > shifted["sync_c"] and ok["d0"] < shifted["d0"] and ok["sync_c"] > still["sync_c"]
    assert wins >= 2
    clip = types.SimpleNamespace(clip_id="c08")
    extra: dict = {}
    m = metric.clip_metrics(clip, read_video(trained.crops / "c08" / "frames.mp4"), None, extra)
    assert set(m) == {"sync_c_talk", "sync_d_talk", "sync_d0_talk", "sync_offset_talk"}
    assert m["sync_c_talk"] == pytest.approx(metric.scores(read_video(trained.crops / "c08" / "frames.mp4"),
                                                           metric.audio("c08", 40))["sync_c"])
    row = metric.row_metrics("real", [extra], [extra], [m])
    assert row["sync_offset_talk"] == m["sync_offset_talk"]


def test_stage_input_errors_are_one_line(tmp_path, runner):
    from talk.cli.main import app

    params = tmp_path / "params.yaml"
    params.write_text(f"paths:\n  crops: {tmp_path / 'none'}\n  sync: {tmp_path / 'out'}\n")
    result = runner.invoke(app, ["train-sync", "--params", str(params)])
    assert result.exit_code == 2 and "crop-align" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
    params.write_text("train_sync:\n  min_shift: 9\n  max_shift: 3\n")
    result = runner.invoke(app, ["train-sync", "--params", str(params)])
    assert result.exit_code == 2 and "max_shift" in result.output


# --------------------------------------------------------------------------------------------
# The expert as a denoiser loss


def _vae(folder: Path) -> Path:
    from talk.artifacts.vae import save_vae
    from talk.models.vae import VaeConfig, build_vae

    torch.manual_seed(1)
    vae = build_vae(VaeConfig(block_out_channels=(8, 8), latent_channels=4, norm_num_groups=4), 32)
    vae.register_to_config(scaling_factor=0.8)
    save_vae(vae, folder)
    return folder


def test_sync_loss_reaches_the_predicted_latents_and_checks_the_window(tmp_path):
    from talk.artifacts.sync import save_expert
    from talk.training.sync import SyncLoss

    vae = _vae(tmp_path / "vae")
    torch.manual_seed(0)
    (tmp_path / "sync").mkdir()
    save_expert(SyncExpert(tiny(frames=3)), tmp_path / "sync", {})
    loss_fn = SyncLoss(tmp_path / "sync", vae, target_frames=4, audio_window=10, device="cpu")
    x0 = torch.randn(2, 4, 4, 16, 16, requires_grad=True)
    audio = torch.randn(2, 4, 10, 2, 8)
    loss = loss_fn(x0, audio, torch.tensor([True, False]))
    loss.backward()
    assert torch.isfinite(loss) and float(x0.grad[0].abs().sum()) > 0
    assert float(x0.grad[1].abs().sum()) == 0  # its audio was dropped: no sync to learn
    with pytest.raises(TalkError, match="target_frames"):
        SyncLoss(tmp_path / "sync", vae, target_frames=1, audio_window=10, device="cpu")
    with pytest.raises(TalkError, match="audio_window"):
        SyncLoss(tmp_path / "sync", vae, target_frames=4, audio_window=8, device="cpu")


def test_evaluate_scores_every_row_with_the_expert(tmp_path):
    """evaluate with an expert in paths.sync: Sync-C / Sync-D (talk expert) in every row, per clip."""
    import pandas as pd

    from eval_fixture import make_crops, make_params
    from talk.artifacts.sync import save_expert
    from talk.evaluation.clips import repeat_reference
    from talk.stages import evaluate

    crops = make_crops(tmp_path / "crops", n_train=6, n_test=12)
    feats = tmp_path / "audio_features"
    feats.mkdir()
    g = np.random.default_rng(0)
    for row in pd.read_csv(crops / "manifest.csv").itertuples():
        np.save(feats / f"{row.clip_id}.npy", g.normal(0, 1, (2 * row.n_frames, 2, 8)).astype(np.float16))
    torch.manual_seed(0)
    (tmp_path / "sync").mkdir()
    save_expert(SyncExpert(tiny(mouth_size=32)), tmp_path / "sync", {})
    params = make_params(crops, tmp_path / "evaluate", max_clips=2, judge_frames_per_clip=2, sync_max_offset=2)
    paths = dataclasses.replace(params.paths, sync=tmp_path / "sync", audio_features=feats)
    params = P.Params(source=params.source, sections=types.MappingProxyType({**params.sections, "paths": paths}))
    rows = evaluate.run(params, render_fn=repeat_reference)
    for row in ("model", "real", "floor"):
        assert {"sync_c_talk", "sync_d_talk", "sync_d0_talk", "sync_offset_talk"} <= set(rows[row]), row
        assert np.isfinite(rows[row]["sync_c_talk"])
    table = pd.read_csv(tmp_path / "evaluate" / "per_clip.csv")
    assert table["sync_c_talk"].notna().all()
    notes = json.loads((tmp_path / "evaluate" / "notes.json").read_text())
    assert not any("talk expert" in n for n in notes["skipped"])


def test_windows_repeat_the_real_videos_and_draw_negatives_by_item(trained):
    from talk.training.sync import SyncWindows, read_clips

    cfg = trained.params.train_sync
    clips = read_clips(trained.crops, trained.feats, "train", cfg, 0)
    clips[0] = dataclasses.replace(clips[0], subset="wild")
    once, twice = SyncWindows(clips, cfg, 0), SyncWindows(clips, cfg, 0, wild_repeat=3)
    per_clip = 40 - 2 * (cfg.model.frames // 2)
    assert len(twice) == len(once) + 2 * per_clip
    assert twice.locate(per_clip) == twice.locate(0) == (0, cfg.model.frames // 2)
    a, b = once[(1, 7)], once[(1, 7)]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(once[(2, 7)]["shifted"], a["shifted"]) or not torch.equal(once[(2, 7)]["other"], a["other"])
    assert torch.equal(a["audio"], once[(2, 7)]["audio"])  # the positive is the item's own window
