"""The denoiser levers of issue 14 (benchmarks/ablation.py rows): noise-augmented context, the face /
lip weighted loss, the residual target, audio cross-attention at more levels. Tiny, CPU."""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest
import torch
from denoiser_fixture import C, M, S, ToySampler, ToyWindows, batch, make_bank, tiny_spec, write_embeddings

from talk.models.denoiser import TalkDenoiser
from talk.models.diffusion import KarrasDenoiser, NoiseSchedule, face_lip_weights, training_loss
from talk.models.sampling import GuidedDenoiser, get_sigmas, sample

torch.set_num_threads(1)

LEVERS = {
    "context_aug": dict(context_aug=True),
    "residual": dict(residual=True),
    "audio_levels": dict(audio_levels=(0,)),
}


def _spec(lever: str | None = None, backbone: str = "frame", frames: int = 1):
    spec = tiny_spec(backbone, frames)
    kw = dict(LEVERS.get(lever, {}))
    if "audio_levels" in kw:
        spec = dataclasses.replace(spec, denoiser=dataclasses.replace(spec.denoiser, audio_levels=kw.pop("audio_levels")))
    return dataclasses.replace(spec, **kw)


def _model(lever=None, backbone="frame", frames=1) -> TalkDenoiser:
    torch.manual_seed(0)
    return TalkDenoiser(_spec(lever, backbone, frames), make_bank())


def _cond(b=2, frames=1, aug=False, seed=0):
    cond = batch(b, frames, seed)
    if aug:
        g = torch.Generator().manual_seed(seed + 7)
        cond["aug"] = torch.rand(b, generator=g) * 0.5
        cond["aug_noise"] = torch.randn(b, 1 + M, C, S, S, generator=g)
    return cond


def _x(b=2, frames=1, seed=1):
    return torch.randn(b, frames, C, S, S, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------
# Shapes, gradients, a few steps


@pytest.mark.parametrize("lever", list(LEVERS))
def test_shapes_and_gradients_with_each_lever(lever):
    model = _model(lever).train()
    out = model(_x(), torch.tensor([10.0, 80.0]), **_cond(aug=lever == "context_aug"))
    assert out.sample.shape == (2, 1, C, S, S)
    (out.sample.pow(2).mean() + out.vq_loss).backward()
    names = ["backbone.conv_in.weight", "cond.audio.frame.1.weight"]
    if lever == "context_aug":
        names.append("backbone.class_embedding.linear_1.weight")
    if lever == "audio_levels":  # level 0 gained a cross-attention-only transformer whose attn1 reads audio
        names.append("backbone.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.weight")
    params = dict(model.named_parameters())
    for name in names:
        assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name


def test_audio_levels_add_cross_attention_only_where_asked():
    plain, more = _model(), _model("audio_levels")
    assert type(plain.backbone.down_blocks[0]).__name__ == "DownBlock2D"
    block = more.backbone.down_blocks[0].attentions[0].transformer_blocks[0]
    assert block.only_cross_attention and block.attn1.is_cross_attention
    assert type(block.attn1.processor).__name__ == "AudioCrossAttnProcessor"
    # the audio drives level 0 now: changing only the audio tokens changes its attn1 output
    x, t = _x(), torch.tensor([10.0, 50.0])
    seen = []
    block.attn1.register_forward_hook(lambda m, a, o: seen.append(o.detach()))
    c1, c2 = _cond(), _cond()
    c2["audio"] = c2["audio"] + 1.0
    with torch.no_grad():
        more.eval()(x, t, **c1)
        more(x, t, **c2)
    assert not torch.allclose(seen[0], seen[1])


def test_context_aug_sigma_and_noise_change_the_prediction():
    model = _model("context_aug").eval()
    with torch.no_grad():
        model.backbone.class_embedding.linear_2.weight.normal_()  # make the σ embedding non-trivial
    x, t = _x(), torch.tensor([10.0, 50.0])
    cond = _cond(aug=True)
    with torch.no_grad():
        a = model(x, t, **cond).sample
        b = model(x, t, **{**cond, "aug": cond["aug"] * 0}).sample  # σ 0: clean context, σ told 0
        c = model(x, t, **{k: v for k, v in cond.items() if k not in ("aug", "aug_noise")}).sample
    assert not torch.allclose(a, b)
    torch.testing.assert_close(b, c)  # no aug given = σ 0


@pytest.mark.parametrize("lever", [*LEVERS, "weighted"])
def test_a_few_steps_lower_the_loss_with_each_lever(lever):
    model = _model(None if lever == "weighted" else lever).train()
    schedule = NoiseSchedule(model.spec.diffusion)
    g = torch.Generator().manual_seed(0)
    x0 = _x(4)
    noise, t = torch.randn(x0.shape, generator=g), torch.randint(0, 100, (4,), generator=g)
    cond = _cond(4, aug=lever == "context_aug")
    weights = face_lip_weights(_landmarks(4), S, S, 2.0, 4.0) if lever == "weighted" else None
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def loss():
        out = training_loss(model, schedule, x0, noise, t, cond, min_snr_gamma=5.0, pixel_weight=weights)
        return out.loss + out.vq_loss

    first = loss().item()
    for _ in range(3):
        opt.zero_grad()
        loss().backward()
        opt.step()
    with torch.no_grad():
        assert loss().item() < first


# --------------------------------------------------------------------------------------------
# Residual target


def test_residual_training_loss_targets_the_change_from_the_reference():
    """An exact network of the residual (x0 − ref) gives zero loss and x0_pred = the frame."""
    spec = _spec("residual")
    schedule = NoiseSchedule(spec.diffusion)
    cond = _cond(3)
    delta = _x(3, seed=4)
    x0 = cond["ref"][:, None] + delta
    noise, t = _x(3, seed=5), torch.tensor([5, 40, 90])

    class Exact(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.spec = spec

        def forward(self, x_t, timestep, **kw):
            return types.SimpleNamespace(sample=schedule.target(delta, noise, t), vq_loss=torch.zeros(()), features=None)

    out = training_loss(Exact(), schedule, x0, noise, t, cond)
    assert out.loss.item() < 1e-10
    torch.testing.assert_close(out.x0_pred, x0, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.x_t, schedule.add_noise(delta, noise, t))


def test_residual_karras_denoiser_adds_the_reference_back():
    model = _model("residual").eval()
    karras = KarrasDenoiser(model, NoiseSchedule(model.spec.diffusion))
    cond = _cond()
    x, sigma = _x(), torch.tensor([0.5, 3.0])
    with torch.no_grad():
        got = karras(x, sigma, **cond)
        plain = dataclasses.replace(model.spec, residual=False)
        model.spec = plain
        base = karras(x - cond["ref"][:, None], sigma, **cond)
    torch.testing.assert_close(got, base + cond["ref"][:, None])


# --------------------------------------------------------------------------------------------
# Face / lip weighting


def _landmarks(b=2, frames=1):
    """dlib-68-like landmarks in crop fractions: face in [0.25, 0.75]², lips around (0.5, 0.65)."""
    rng = np.random.default_rng(0)
    lm = rng.uniform(0.25, 0.75, (b, frames, 68, 2)).astype(np.float32)
    lm[..., 0, :] = (0.25, 0.25)
    lm[..., 1, :] = (0.75, 0.75)  # the face box: exactly [0.25, 0.75]²
    lips = np.stack(np.meshgrid(np.linspace(0.4, 0.6, 5), np.linspace(0.62, 0.68, 4)), -1).reshape(-1, 2)
    lm[..., 48:68, :] = lips  # width 0.2 -> mouth box x 0.38..0.62, y 0.55..0.75
    return torch.from_numpy(lm)


def test_face_lip_weights_are_what_they_say():
    h = w = 40  # cells of 0.025: the boxes' edges fall on cell edges
    wt = face_lip_weights(_landmarks(), h, w, 2.0, 5.0)
    assert wt.shape == (2, 1, 1, h, w)
    cell = lambda x, y: float(wt[0, 0, 0, int(y * h), int(x * w)])  # noqa: E731
    assert cell(0.05, 0.05) == pytest.approx(1.0)  # background
    assert cell(0.3, 0.3) == pytest.approx(2.0)  # face, not mouth
    assert cell(0.5, 0.65) == pytest.approx(5.0)  # mouth
    assert face_lip_weights(_landmarks(), h, w, 1.0, 1.0).eq(1).all()  # 1, 1: unweighted


@pytest.mark.parametrize("w_lip", [1.0, 3.0, 7.0])
def test_the_loss_on_a_mouth_only_error_scales_with_w_lip(w_lip):
    """A prediction wrong only inside the mouth box: its weighted loss is w_lip x the unweighted one."""
    spec = _spec()
    schedule = NoiseSchedule(dataclasses.replace(spec.diffusion))
    h = 40  # cells of 0.025: the mouth box covers whole cells
    lm = _landmarks(2)
    lip_only = face_lip_weights(lm, h, h, 1.0, 2.0) == 2.0  # cells entirely inside the mouth box
    assert lip_only.any()
    g = torch.Generator().manual_seed(2)
    x0, noise, t = torch.randn(2, 1, C, h, h, generator=g), torch.randn(2, 1, C, h, h, generator=g), torch.tensor([10, 60])
    target = schedule.target(x0, noise, t)
    wrong = target + 0.3 * lip_only.float()  # differs only in the mouth cells

    class Fixed(torch.nn.Module):
        def forward(self, x_t, timestep, **kw):
            return types.SimpleNamespace(sample=wrong, vq_loss=torch.zeros(()), features=None)

    plain = training_loss(Fixed(), schedule, x0, noise, t, {})
    weighted = training_loss(Fixed(), schedule, x0, noise, t, {}, pixel_weight=face_lip_weights(lm, h, h, 1.5, w_lip))
    assert plain.loss.item() > 0
    assert weighted.loss.item() == pytest.approx(w_lip * plain.loss.item(), rel=1e-5)
    torch.testing.assert_close(weighted.per_sample, plain.per_sample)  # per_sample stays unweighted


def test_dataset_landmarks_come_from_the_crops(tmp_path):
    from denoiser_fixture import make_pipeline_inputs

    from talk.data.windows import LatentDataset

    root = tmp_path
    make_pipeline_inputs(root)
    import pandas as pd

    df = pd.read_csv(root / "crops" / "manifest.csv")
    for row in df.itertuples():
        d = root / "crops" / row.clip_id
        d.mkdir(parents=True, exist_ok=True)
        lm = np.tile(np.arange(68 * 2, dtype=np.float32).reshape(1, 68, 2) % 16, (int(row.n_frames), 1, 1))
        lm[:, 0, 0] = np.arange(int(row.n_frames))  # frame index in the first x
        np.save(d / "landmarks.npy", lm)
    from talk.artifacts.vae import vae_identity

    ds = LatentDataset(root / "latents.lmdb", root / "audio_features", root / "crops", ("train",), 1, M, 4,
                       vae_identity=vae_identity(root / "vae"), landmarks=True, image_size=16)
    item = ds[3]
    assert item["landmarks"].shape == (1, 68, 2)
    assert item["landmarks"][0, 0, 0].item() == pytest.approx(item["frame"] / 16)
    assert "landmarks" not in LatentDataset(root / "latents.lmdb", root / "audio_features", root / "crops", ("train",), 1, M,
                                            4, vae_identity=vae_identity(root / "vae"))[3]


# --------------------------------------------------------------------------------------------
# The noise-augmented sampler, and save / load


def _render_inputs(model):
    from talk.inference.config import RenderLoop, Settings
    from talk.inference.settings import SamplingConfig

    g = torch.Generator().manual_seed(3)
    ref = torch.randn(C, S, S, generator=g)
    feats = torch.randn(2 * 6, 2, 8, generator=g)  # (2T, L, D) of the tiny spec (L=2, D=8)
    z, style = torch.randn(8, generator=g), torch.randn(8, generator=g)
    karras = KarrasDenoiser(model, NoiseSchedule(model.spec.diffusion))
    settings = Settings(SamplingConfig(steps=3, context_aug=0.2), RenderLoop(seed=5))
    guided = GuidedDenoiser(karras, {"ref": 1.0, "audio": 2.0, "emotion": 2.0}, steps=settings.sampling.guided_steps())
    sigmas = get_sigmas(karras.schedule, 3)
    return guided, sigmas, ref, feats, z, style, settings


@pytest.mark.parametrize("schedule", ["rolling", "window"])
def test_noise_augmented_sampler_is_deterministic_under_a_seed(schedule):
    from talk.inference import schedules

    model = _model("context_aug").eval()
    with torch.no_grad():
        model.backbone.class_embedding.linear_2.weight.normal_()
    guided, sigmas, ref, feats, z, style, s = _render_inputs(model)
    s = s.replace(schedule=schedule, window=3)

    def render(settings):
        parts = schedules.generate_latents(guided, model.spec, sigmas, ref, feats, 6, z, style, settings, "cpu")
        return torch.cat([lat for _, lat in parts])

    a, b = render(s), render(s)
    assert a.shape == (6, C, S, S)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, render(s.replace(seed=6)))  # the seed moves the context noise too
    assert not torch.allclose(a, render(s.replace(context_aug=0.0)))  # the σ is used


def test_aug_noise_does_not_depend_on_the_batch():
    from talk.inference.schedules import context_aug

    spec, sampling = _spec("context_aug"), types.SimpleNamespace(context_aug=0.1)
    both = context_aug(spec, sampling, [3, 4], 7, "cpu")
    one = context_aug(spec, sampling, [4], 7, "cpu")
    torch.testing.assert_close(both["aug_noise"][1:], one["aug_noise"])
    assert context_aug(_spec(), sampling, [3], 7, "cpu") == {}


@pytest.mark.parametrize("lever", list(LEVERS))
def test_save_load_round_trip_with_each_lever(tmp_path, lever):
    from talk.artifacts.denoiser import load_denoiser, save_denoiser

    model = _model(lever).eval()
    save_denoiser(model, tmp_path / "den")
    loaded = load_denoiser(tmp_path / "den")
    assert loaded.spec == model.spec
    x, t, cond = _x(), torch.tensor([3.0, 50.0]), _cond(aug=lever == "context_aug")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, **cond).sample, model(x, t, **cond).sample)


def test_stage_run_with_every_lever_exports_and_previews(tmp_path):
    """train() with context noise, residual target and audio levels on: a loadable denoiser."""
    from talk.artifacts.denoiser import load_denoiser
    from talk.artifacts.prior import ClipEmbeddings
    from talk.inference.settings import SamplingConfig
    from talk.training.diffusion import ObjectiveConfig, PreviewConfig, TrainDiffusionConfig, train
    from talk.training.trainer import LoopConfig

    cfg = TrainDiffusionConfig(loop=LoopConfig(steps=3, batch_size=4, lr=1e-3, warmup_steps=1, checkpoint_every=3,
                                               log_every=1, ema_decay=0.9),
                               objective=ObjectiveConfig(context_aug=0.3, residual=True), val_batches=1,
                               preview=PreviewConfig(samples=2), sampling=SamplingConfig(steps=2))
    data = ToyWindows(12)
    emb = ClipEmbeddings(write_embeddings(tmp_path / "emb.npz", data))
    spec = dataclasses.replace(_spec("audio_levels"), context_aug=True, residual=True)
    train(cfg, spec, make_bank(), emb, data, ToyWindows(4, seed=1), lambda d: (lambda s: ToySampler(d, 0, s)),
          seed=0, out=tmp_path / "out", work=tmp_path / "work", device="cpu")
    loaded = load_denoiser(tmp_path / "out")
    assert loaded.spec.context_aug and loaded.spec.residual and loaded.spec.denoiser.audio_levels == (0,)
