"""Emotion / style prior, Emotion Bank, stage `pretrain_prior`, presets import, `talk embed`."""

from __future__ import annotations

import json
import os
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from prior_fixture import make_prior_fixture

from talk.core import params as P
from talk.core.errors import TalkError
from talk.models.emotion_bank import EmotionBank, EmotionBankConfig, vector_quantize
from talk.models.prior import (
    EmotionEmbedder,
    PriorConfig,
    ProbabilisticContrastiveLoss,
    emotion_pairs,
    kl_standard_normal,
    style_pairs,
)

L, D = 5, 384  # Whisper-tiny-shaped features, so that `talk embed` can use the real encoder
TINY_PRIOR = {"width": 32, "layers": 1, "attn_heads": 2, "emb_dim": 16, "ff_mult": 2, "audio_layers": L, "audio_dim": D}
TINY_BANK = {"emb_dim": 16, "n_codes": 8, "code_dim": 16, "attn_heads": 2, "n_queries": 4, "n_tokens": 4, "token_dim": 16}


def tiny_prior(**kw) -> PriorConfig:
    return P.parse(PriorConfig, {**TINY_PRIOR, **kw}, "prior")


def tiny_bank(**kw) -> EmotionBankConfig:
    return P.parse(EmotionBankConfig, {**TINY_BANK, **kw}, "bank")


# --------------------------------------------------------------------------------------------
# Vector quantisation and the Emotion Bank


def test_vq_straight_through_gradient_reaches_the_input():
    torch.manual_seed(0)
    x = torch.randn(6, 4, requires_grad=True)
    codebook = torch.randn(5, 4)
    vq = vector_quantize(x, codebook, beta=0.25)
    assert torch.allclose(vq.quantized.detach(), codebook[vq.indices], atol=1e-6)  # forward value = the codes
    w = torch.randn(6, 4)
    (vq.quantized * w).sum().backward()
    assert torch.allclose(x.grad, w)  # straight-through: identity gradient to the encoder output


def test_vq_loss_is_codebook_plus_commitment_and_splits_gradients():
    torch.manual_seed(1)
    x = torch.randn(7, 3, requires_grad=True)
    codebook = torch.randn(4, 3, requires_grad=True)
    beta = 0.25
    vq = vector_quantize(x, codebook, beta)
    nearest = torch.stack([((codebook - xi) ** 2).sum(1).argmin() for xi in x.detach()])
    assert torch.equal(vq.indices, nearest)
    e = codebook.detach()[nearest]
    expected = ((x.detach() - e) ** 2).mean() * (1 + beta)  # ||sg(z)-e||^2 + beta ||z-sg(e)||^2
    assert torch.allclose(vq.loss, expected)
    vq.loss.backward()
    n = x.numel()
    assert torch.allclose(x.grad, beta * 2 * (x.detach() - e) / n, atol=1e-6)  # commitment term only
    want = torch.zeros_like(codebook)
    want.index_add_(0, nearest, 2 * (e - x.detach()) / n)  # codebook term only
    assert torch.allclose(codebook.grad, want, atol=1e-6)


def test_codes_move_toward_their_assigned_inputs():
    torch.manual_seed(2)
    x = torch.randn(64, 8) + 3.0
    codebook = torch.nn.Parameter(torch.randn(4, 8))
    opt = torch.optim.SGD([codebook], lr=5.0)
    first = vector_quantize(x, codebook, 0.25).indices
    used = first.unique()

    def gap():
        return sum((codebook[k] - x[first == k].mean(0)).norm() for k in used).item()

    before = gap()
    for _ in range(5):
        opt.zero_grad()
        vector_quantize(x, codebook, 0.25).loss.backward()
        opt.step()
    assert gap() < 0.5 * before


def test_bank_shapes_gradient_usage_and_token_mixing():
    torch.manual_seed(3)
    bank = EmotionBank(tiny_bank(n_tokens=6))
    z = torch.randn(5, 16, requires_grad=True)
    out = bank(z)
    assert out.tokens.shape == (5, 6, 16)
    assert out.indices.shape == (5, 4) and out.indices.dtype == torch.long
    assert 1.0 <= float(out.perplexity) <= 8.0
    assert out.vq_loss.ndim == 0
    (out.tokens.sum() + out.vq_loss).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    before = bank.usage.clone()
    bank(torch.randn(5, 16))
    assert not torch.equal(before, bank.usage)  # EMA usage updates in training mode
    bank.eval()
    after = bank.usage.clone()
    bank(torch.randn(5, 16))
    assert torch.equal(after, bank.usage)


def test_dead_codes_restart_on_recent_queries():
    torch.manual_seed(4)
    bank = EmotionBank(tiny_bank())
    bank.usage.fill_(1 / 8)
    bank.usage[[1, 5]] = 0.0
    assert bank.dead_codes().tolist() == [1, 5]
    candidates = torch.randn(3, 16)
    n = bank.restart_dead_codes(candidates, torch.Generator().manual_seed(0))
    assert n == 2
    for k in (1, 5):
        assert any(torch.equal(bank.codebook.data[k], c) for c in candidates)
        assert bank.usage[k] == pytest.approx(1 / 8)
    assert bank.restart_dead_codes(candidates) == 0  # nothing dead any more


# --------------------------------------------------------------------------------------------
# The embedder and its contrastive objective


def _inputs(B=4, T=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 2 * T, L, D, generator=g), torch.randn(B, T, 136, generator=g) * 0.1


def test_embedder_modes_shapes_determinism_and_modality_masks():
    torch.manual_seed(5)
    m = EmotionEmbedder(tiny_prior()).eval()
    audio, visual = _inputs()
    for kw in ({"audio": audio}, {"visual": visual}, {"audio": audio, "visual": visual}):
        mu, logvar = m(**kw)
        assert mu.shape == logvar.shape == (4, 16)
        assert torch.isfinite(mu).all() and torch.isfinite(logvar).all()
        mu2, logvar2 = m(**kw)
        assert torch.equal(mu, mu2) and torch.equal(logvar, logvar2)  # eval: deterministic
    # a sample whose audio is fully masked is embedded from its video alone (modality dropout)
    amask = torch.ones(4, 40, dtype=torch.bool)
    amask[1] = False
    mu_both, _ = m(audio, visual, audio_mask=amask)
    mu_video, _ = m(visual=visual)
    assert torch.allclose(mu_both[1], mu_video[1], atol=1e-5)
    assert not torch.allclose(mu_both[0], mu_video[0], atol=1e-3)
    with pytest.raises(ValueError):
        m()


def test_pair_targets():
    emo = torch.tensor([0, 0, 0, 1, -1])
    lvl = torch.tensor([1, 1, 1, 2, 0])
    spk = torch.tensor([0, 1, 0, 1, 2])
    clip = torch.tensor([0, 1, 2, 3, 4])
    target, weight = emotion_pairs(emo, lvl, spk, clip)
    assert target[0, 1] == 1 and weight[0, 1] == 1  # same emotion, different speakers: positive
    assert weight[0, 2] == 0  # same emotion, same speaker: ignored (identity would help)
    assert target[1, 3] == 0 and weight[1, 3] == 1  # same speaker, other emotion: negative
    assert weight[4].sum() == 0 and weight[:, 4].sum() == 0  # unlabelled clip: ignored
    assert weight.diagonal().sum() == 0
    target, weight = style_pairs(spk, torch.tensor([0, 0, 1, 2, 3]))
    assert target[0, 1] == 1 and weight[0, 1] == 1  # two windows of one clip
    assert weight[0, 2] == 0  # another clip of the same speaker: ignored
    assert target[0, 3] == 0 and weight[0, 3] == 1


def test_contrastive_loss_decreases_in_a_few_steps():
    torch.manual_seed(6)
    m = EmotionEmbedder(tiny_prior(dropout=0.0))
    loss_fn = ProbabilisticContrastiveLoss()
    audio, visual = _inputs(B=8, seed=1)
    emo = torch.tensor([0, 1, 2, 3] * 2)
    visual = visual + emo.view(-1, 1, 1) * 0.3  # the emotion is visible
    spk = torch.tensor([0] * 4 + [1] * 4)
    target, weight = emotion_pairs(emo, torch.ones(8, dtype=torch.long), spk, torch.arange(8))
    opt = torch.optim.Adam([*m.parameters(), *loss_fn.parameters()], lr=3e-3)

    def loss():
        mu, logvar = m(audio, visual)
        g = torch.Generator().manual_seed(0)
        return loss_fn(mu, logvar, target, weight, 4, g) + 1e-3 * kl_standard_normal(mu, logvar)

    first = loss().item()
    for _ in range(15):
        opt.zero_grad()
        v = loss()
        v.backward()
        opt.step()
    assert loss().item() < 0.8 * first


def test_match_probability_prefers_close_gaussians():
    loss_fn = ProbabilisticContrastiveLoss()
    g = torch.Generator().manual_seed(0)
    mu = torch.zeros(1, 8)
    near, far = torch.full((1, 8), 0.1), torch.full((1, 8), 3.0)
    z = lambda m: m + 0.1 * torch.randn(4, *m.shape, generator=g)  # noqa: E731
    assert loss_fn.match_probability(z(mu), z(near)) > loss_fn.match_probability(z(mu), z(far))


# --------------------------------------------------------------------------------------------
# The stage on a synthetic fixture


def stage_params(tmp: Path, crops: Path, feats: Path, out: Path, loop: dict | None = None, **over) -> P.Params:
    from talk.stages.pretrain_prior import Config

    cfg = {"window": 1.0, "eval_every": 10, "patience": 3, "restart_every": 10,
           "loop": {"steps": 40, "batch_size": 8, "checkpoint_every": 20, **(loop or {})}, **over}
    sections = {
        "base": P.parse(P.Base, {"threads": 1}, "base"),
        "paths": P.parse(P.Paths, {"cache": str(tmp / "cache"), "crops": str(crops), "audio_features": str(feats),
                                   "prior": str(out)}, "paths"),
        "model": P.parse(P.Model, {"prior": TINY_PRIOR, "bank": TINY_BANK}, "model"),
        "pretrain_prior": P.parse(Config, cfg, "pretrain_prior"),
    }
    return P.Params(source=tmp / "params.yaml", sections=types.MappingProxyType(sections))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from talk.core import runtime
    from talk.stages.pretrain_prior import run

    tmp = tmp_path_factory.mktemp("prior")
    speakers = {"A": "train", "B": "train", "C": "val", "D": "test"}
    crops, feats = make_prior_fixture(tmp, speakers, clips_per=2, n_frames=40, layers=L, dim=D, wild=1)
    params = stage_params(tmp, crops, feats, tmp / "prior")
    runtime.setup(params.base)
    run(params)
    return types.SimpleNamespace(tmp=tmp, crops=crops, feats=feats, out=tmp / "prior", params=params)


def test_stage_writes_every_file_and_learns_emotion(trained):
    from talk.stages.pretrain_prior import FILES

    for name in (*FILES, "params.yaml"):
        assert (trained.out / name).is_file(), name
    assert not [p for p in trained.out.parent.iterdir() if p.name.startswith(".prior")]  # no temp left
    m = json.loads((trained.out / "metrics.json").read_text())
    ep = m["emotion_probe"]
    assert ep["unseen_speakers"] and ep["eval_speakers"] == ["C", "D"]
    assert ep["both"] > ep["chance"] and ep["video"] > ep["chance"]
    assert set(m["identity"]) >= {"emotion_head", "style_head", "chance"}
    assert m["codebook"]["n_codes"] == 8 and 1 <= m["codebook"]["perplexity"] <= 8
    assert 1 <= m["train"]["best_step"] <= m["train"]["steps"] <= 40
    with np.load(trained.out / "clip_embeddings.npz", allow_pickle=False) as f:
        ids = list(f["clip_id"])
        assert f["mu"].shape == f["logvar"].shape == f["style_mu"].shape == (len(ids), 16)
    import pandas as pd

    assert sorted(ids) == sorted(pd.read_csv(trained.crops / "manifest.csv")["clip_id"])  # every split
    png = (trained.out / "embeddings.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    header = (trained.out / "curves.tsv").read_text().splitlines()[0].split("\t")
    assert header[0] == "step" and "val_loss" in header


def test_checkpoint_round_trip_reproduces_the_embeddings(trained):
    from talk.artifacts.prior import load_prior
    from talk.data.clips import ClipSet
    from talk.training.prior import embed_clips

    a, b = load_prior(trained.out), load_prior(trained.out)
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    cfg = json.loads((trained.out / "config.json").read_text())
    assert cfg["prior"]["emb_dim"] == 16 and cfg["bank"]["n_codes"] == 8 and cfg["bank_head"] == "emotion"
    data = ClipSet.load(trained.crops, trained.feats, L, D)
    emb = embed_clips(a.model, data, list(range(len(data))), "both", 8, "cpu")
    with np.load(trained.out / "clip_embeddings.npz", allow_pickle=False) as f:
        assert list(f["clip_id"]) == [c.clip_id for c in data.clips]
        np.testing.assert_allclose(emb["emotion"][0], f["mu"], atol=1e-5)
        np.testing.assert_allclose(emb["style"][1], f["style_logvar"], atol=1e-5)
    out = a.bank(torch.as_tensor(emb["emotion"][0][:3]))
    assert out.tokens.shape == (3, 4, 16)


def test_presets_round_trip_and_lookup(trained, tmp_path):
    from talk.artifacts.prior import load_presets, load_prior, save_presets

    bundle = load_prior(trained.out)
    names = set(bundle.presets)
    assert {"emotion/neutral", "emotion/happy", "emotion/sad", "emotion/happy/1", "style/A", "style/B"} <= names
    mean, logvar = bundle.preset("happy")
    assert mean.shape == logvar.shape == (16,)
    assert torch.equal(bundle.preset("happy", 1)[0], bundle.presets["emotion/happy/1"][0])
    with pytest.raises(TalkError, match="unknown emotion"):
        bundle.preset("joyful")
    with pytest.raises(TalkError, match="no preset for angry"):
        bundle.preset("angry")
    path = tmp_path / "p.safetensors"
    save_presets(path, {k: (v[0].numpy(), v[1].numpy()) for k, v in bundle.presets.items()}, "test")
    again = load_presets(path)
    assert set(again) == names
    for k in names:
        assert torch.equal(again[k][0], bundle.presets[k][0]) and torch.equal(again[k][1], bundle.presets[k][1])


def test_stage_input_errors_are_one_line(tmp_path):
    from talk.stages.pretrain_prior import run

    crops, feats = make_prior_fixture(tmp_path, {"A": "train", "B": "train"}, clips_per=1, n_frames=30, layers=L, dim=D)
    (feats / "A_happy_1_000.npy").unlink()
    params = stage_params(tmp_path, crops, feats, tmp_path / "out")
    with pytest.raises(TalkError, match="audio features of clip A_happy_1_000 not found"):
        run(params)
    assert not (tmp_path / "out").exists()
    (crops / "manifest.csv").write_text("clip_id,speaker\nx,y\n")
    with pytest.raises(TalkError, match="missing column"):
        run(params)
    with pytest.raises(TalkError, match="manifest.csv not found"):
        run(stage_params(tmp_path, tmp_path / "nowhere", feats, tmp_path / "out"))


# --------------------------------------------------------------------------------------------
# DICE-Talk presets import (pickle only with --trust-pickle)


def _pickled_presets(tmp_path: Path) -> Path:
    path = tmp_path / "dice_presets.npy"
    g = np.random.default_rng(0)
    np.save(path, {"happy": g.normal(size=256).astype(np.float32), "angry": g.normal(size=256).astype(np.float32)},
            allow_pickle=True)
    return path


def test_import_presets_refuses_pickle_without_the_flag(tmp_path):
    from talk.artifacts.prior import import_dice_presets, load_presets

    src = _pickled_presets(tmp_path)
    with pytest.raises(TalkError, match="trust-pickle"):
        import_dice_presets(src, tmp_path / "out.safetensors", trust_pickle=False)
    assert not (tmp_path / "out.safetensors").exists()
    import_dice_presets(src, tmp_path / "out.safetensors", trust_pickle=True)
    presets = load_presets(tmp_path / "out.safetensors")
    assert set(presets) == {"emotion/happy", "emotion/angry"}
    want = np.load(src, allow_pickle=True).item()["happy"]
    np.testing.assert_array_equal(presets["emotion/happy"][0].numpy(), want)
    plain = tmp_path / "plain.npy"  # a plain (8, E) array needs no pickle
    np.save(plain, np.zeros((8, 4), np.float32))
    import_dice_presets(plain, tmp_path / "plain.safetensors", trust_pickle=False)
    assert len(load_presets(tmp_path / "plain.safetensors")) == 8


def test_import_presets_cli(runner, root, tmp_path):
    from talk.cli.main import app

    src = _pickled_presets(tmp_path)
    out = tmp_path / "dice.safetensors"
    args = ["pretrain-prior", "--params", str(root / "params.yaml"), "--import-presets", str(src), "--presets-out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "trust-pickle" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, [*args, "--trust-pickle"])
    assert result.exit_code == 0, result.output
    assert out.is_file()


# --------------------------------------------------------------------------------------------
# `talk embed` on a real face and real speech carried in the repo


@pytest.fixture(scope="module")
def reference_clip(root, tmp_path_factory):
    import cv2

    from talk.media import io as media

    portrait = root / "data" / "sources" / "portraits" / "dreamtalk__f30.png"
    speech = root / "data" / "sources" / "speech" / "emotalk__happy__01.wav"
    if not portrait.is_file() or not speech.is_file():
        pytest.skip("sample portrait / speech not in the repo")
    img = cv2.cvtColor(cv2.imread(str(portrait)), cv2.COLOR_BGR2RGB)
    img = img[: img.shape[0] // 2 * 2, : img.shape[1] // 2 * 2]
    n = 20
    frames = [np.roll(img, (k % 3) - 1, axis=1) for k in range(n)]  # a little motion
    audio = media.read_audio(speech)[: n * media.AUDIO_RATE // media.VIDEO_FPS]
    path = tmp_path_factory.mktemp("ref") / "ref.mp4"
    media.write_video(path, frames, audio=audio)
    wav = path.with_suffix(".wav")
    media.write_wav(wav, audio)
    return path, wav


def test_talk_embed_both_audio_and_video(trained, reference_clip, runner, root, tmp_path):
    from talk.cli.main import app

    video, wav = reference_clip
    common = ["--params", str(root / "params.yaml"), "--prior", str(trained.out),
              "--set", f"paths.cache={trained.tmp / 'cache'}", "--set", "base.threads=1"]
    runs = {"both": [str(video)], "audio": [str(wav)], "video": [str(video), "--video-only", "--neutral", str(video)]}
    for mode, args in runs.items():
        out = tmp_path / f"{mode}.npz"
        result = runner.invoke(app, ["embed", *args, "--out", str(out), *common])
        assert result.exit_code == 0, result.output
        with np.load(out, allow_pickle=False) as f:
            assert str(f["mode"]) == mode
            assert f["mu"].shape == f["logvar"].shape == f["style_mu"].shape == (16,)
            assert np.isfinite(f["mu"]).all()
            assert set(f["preset_names"]) == {"neutral", "happy", "sad"}
            assert ((0 <= f["preset_match"]) & (f["preset_match"] <= 1)).all()
            assert int(f["n_frames"]) == 20
            assert str(f["template"]) == ("population" if mode != "video" else f"neutral:{video}")
    result = runner.invoke(app, ["embed", str(wav), "--video-only", "--out", str(tmp_path / "x.npz"), *common])
    assert result.exit_code == 2 and "no video stream" in result.output
    result = runner.invoke(app, ["embed", str(video), "--audio-only", "--video-only", *common])
    assert result.exit_code == 2


def test_talk_train_dry_run_shows_its_stages(runner, root):
    from talk.cli.main import app
    from talk.cli.train import PIPELINE

    assert PIPELINE == ("pretrain_prior", "train_diffusion", "finetune_disc")
    result = runner.invoke(app, ["train", "--params", str(root / "params.yaml"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "pretrain_prior:" in result.output


def test_damaged_checkpoint_is_a_user_error(trained, tmp_path):
    import shutil

    from talk.artifacts.prior import load_prior

    copy = tmp_path / "prior"
    shutil.copytree(trained.out, copy)
    (copy / "model.safetensors").write_bytes((copy / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(TalkError, match="truncated or not a safetensors file"):
        load_prior(copy)
    cfg = json.loads((trained.out / "config.json").read_text())
    cfg["prior"]["width"] = 48
    shutil.copy(trained.out / "model.safetensors", copy / "model.safetensors")
    (copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(TalkError, match="does not match"):
        load_prior(copy)
    with pytest.raises(TalkError, match="not found"):
        load_prior(tmp_path / "nowhere")


def test_stage_resumes_by_re_running_and_writes_public_files(trained, tmp_path):
    """A killed run (here: a shorter one) resumes from <paths.prior>/checkpoints to the same weights."""
    import stat

    import yaml
    from safetensors.torch import load_file

    from talk.stages.pretrain_prior import run

    out = tmp_path / "prior"
    long = {"patience": 100}  # no early stop: both runs take every step
    run(stage_params(trained.tmp, trained.crops, trained.feats, out, loop={"steps": 20}, **long))
    assert sorted(p.name for p in (out / "checkpoints").glob("*/step-*")) == ["step-0000020"]
    run(stage_params(trained.tmp, trained.crops, trained.feats, out, **long))
    straight = tmp_path / "straight"
    run(stage_params(trained.tmp, trained.crops, trained.feats, straight, **long))
    a, b = load_file(str(out / "model.safetensors")), load_file(str(straight / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=k)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (out, straight))
    assert ma["emotion_probe"] == mb["emotion_probe"] and ma["train"]["dead_code_restarts"] == mb["train"]["dead_code_restarts"]
    assert (out / "curves.tsv").read_text() == (straight / "curves.tsv").read_text()
    mask = os.umask(0)
    os.umask(mask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()}
    assert all(m == 0o666 & ~mask for m in modes.values()), {k: oct(v) for k, v in modes.items()}
    assert list(yaml.safe_load((out / "params.yaml").read_text())) == ["base", "paths", "model", "pretrain_prior"]


def test_early_stopped_run_keeps_its_best_validated_weights(trained):
    m = json.loads((trained.out / "metrics.json").read_text())["train"]
    rows = [line.split("\t") for line in (trained.out / "curves.tsv").read_text().splitlines()]
    col = rows[0].index("val_loss")
    vals = {int(float(r[0])): float(r[col]) for r in rows[1:] if r[col]}
    assert m["best_step"] in vals and m["best_val_loss"] == pytest.approx(min(vals.values()), abs=1e-4)
    assert m["steps"] == max(vals)  # validated at the last step too
