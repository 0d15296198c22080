"""The denoiser family: backbones, conditions, guidance, samplers, training loop, checkpoints."""

from __future__ import annotations

import dataclasses
import json
import types

import pytest
import torch
from denoiser_fixture import (
    C,
    M,
    S,
    ToySampler,
    ToyWindows,
    batch,
    make_bank,
    tiny_spec,
    write_embeddings,
)

from talk.models.denoiser import TalkDenoiser
from talk.models.denoiser_config import DiscriminatorConfig
from talk.models.diffusion import KarrasDenoiser, NoiseSchedule, training_loss
from talk.models.discriminator import EmotionDiscriminator, class_targets
from talk.models.sampling import SAMPLERS, GuidedDenoiser, get_sigmas, guidance_branches, sample
from talk.training.trainer import LoopConfig

torch.set_num_threads(1)


def _model(backbone="frame", frames=1, style=True, **diffusion) -> TalkDenoiser:
    torch.manual_seed(0)
    return TalkDenoiser(tiny_spec(backbone, frames, style, **diffusion), make_bank()).eval()


def _x(b=2, frames=1, seed=1):
    return torch.randn(b, frames, C, S, S, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------
# Shapes and gradients


@pytest.mark.parametrize("backbone, frames", [("frame", 1), ("frame", 2), ("clip", 3)])
def test_shapes_and_gradients(backbone, frames):
    model = _model(backbone, frames).train()
    cond = batch(2, frames)
    out = model(_x(2, frames), torch.tensor([10.0, 80.0]), features=True, **cond)
    assert out.sample.shape == (2, frames, C, S, S)
    assert out.features.shape[:3] == (2, frames, model.feature_channels)
    loss = out.sample.pow(2).mean() + out.vq_loss
    loss.backward()
    for name in ("backbone.conv_in.weight", "cond.audio.frame.1.weight", "cond.emotion.0.weight",
                 "cond.style.0.weight", "emotion_bank.to_queries.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    # decoupled attention: emotion/style keys have their own projections, audio the UNet's own
    procs = [p for n, p in model.backbone.attn_processors.items() if "attn2" in n and "temporal" not in n]
    assert procs and all(len(p.to_k_ip) == 2 for p in procs)


def test_gradient_checkpointing_gives_the_same_gradients():
    spec = tiny_spec()
    ckpt = dataclasses.replace(spec, denoiser=dataclasses.replace(spec.denoiser, gradient_checkpointing=True))
    grads = []
    for s in (spec, ckpt):
        torch.manual_seed(0)
        model = TalkDenoiser(s, make_bank()).train()
        model(_x(), torch.tensor([10.0, 80.0]), **batch()).sample.pow(2).mean().backward()
        grads.append(model.backbone.conv_in.weight.grad)
    assert ckpt.denoiser.gradient_checkpointing
    torch.testing.assert_close(grads[0], grads[1])


def test_features_only_stops_after_mid_block():
    model = _model()
    out = model(_x(), torch.tensor([5.0, 5.0]), features_only=True, **batch())
    assert out.sample is None and out.features is not None
    full = model(_x(), torch.tensor([5.0, 5.0]), features=True, **batch())
    torch.testing.assert_close(out.features, full.features)


def test_unknown_backbone_raises():
    from talk.models.denoiser import make_backbone

    with pytest.raises(ValueError, match="unknown backbone"):
        make_backbone("transformer", {})


# --------------------------------------------------------------------------------------------
# Conditions


@pytest.mark.parametrize("backbone", ["frame", "clip"])
def test_dropping_each_condition_changes_the_prediction(backbone):
    frames = 2 if backbone == "clip" else 1
    model = _model(backbone, frames)
    x, t, cond = _x(2, frames), torch.tensor([30.0, 60.0]), batch(2, frames)
    with torch.no_grad():
        full = model(x, t, **cond).sample
        for c in ("ref", "motion", "audio", "emotion", "style"):
            keep = {c: torch.tensor([False, True])}
            dropped = model(x, t, keep=keep, **cond).sample
            assert (dropped[0] - full[0]).abs().max() > 1e-5, f"{c} is not used"
            torch.testing.assert_close(dropped[1], full[1])  # the other sample is untouched
        other = model(x, t, **{**cond, "emotion": cond["emotion"] + 1.0}).sample
        assert (other - full).abs().max() > 1e-5


def test_emotion_scale_switches_the_emotion_attention_off():
    model = _model(style=False)
    x, t, cond = _x(), torch.tensor([30.0, 60.0]), batch()
    with torch.no_grad():
        model.set_condition_scales(emotion=0.0)
        a = model(x, t, **cond).sample
        b = model(x, t, **{**cond, "emotion": cond["emotion"] + 3.0}).sample
    torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------------------------
# Guidance and samplers


def test_guidance_branches():
    # DICE-Talk's release: nothing / image / image+audio+emotion
    branches = guidance_branches({"ref": 3.0, "audio": 6.0, "emotion": 6.0})
    assert [(sorted(k for k, v in b.items() if v), w) for b, w in branches] == [
        ([], -2.0), (["ref"], -3.0), (["audio", "emotion", "ref"], 6.0)]
    assert [w for _, w in guidance_branches({"ref": 1.0, "audio": 1.0, "emotion": 1.0})] == [1.0]
    assert sum(w for _, w in guidance_branches({"ref": 2.0, "audio": 5.0, "emotion": 1.5, "style": 3.0})) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no guidance"):
        guidance_branches({"lips": 2.0})


def test_guidance_batching_equals_per_branch_forwards():
    model = _model()
    schedule = NoiseSchedule(model.spec.diffusion)
    den = KarrasDenoiser(model, schedule)
    scales = {"ref": 2.0, "audio": 3.0, "emotion": 4.5, "style": 1.5}
    guided = GuidedDenoiser(den, scales)
    x, sigma, cond = _x() * 3, torch.tensor([2.0, 5.0]), batch()
    with torch.no_grad():
        got = guided(x, sigma, **cond)
        want = 0
        for keep, w in guidance_branches(scales):
            masks = {c: torch.full((2,), on) for c, on in keep.items()}
            want = want + w * den(x, sigma, keep=masks, **cond)
    assert len(guided.branches) == 5
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_karras_denoiser_recovers_x0_from_an_exact_network(prediction):
    """An oracle network (the true ε / v) makes D(x0 + σ ε, σ) = x0: the VE <-> VP maps agree."""
    spec = tiny_spec(prediction_type=prediction)
    schedule = NoiseSchedule(spec.diffusion)
    x0, eps = _x(seed=2), _x(seed=3)
    t = torch.tensor([20, 70])

    class Oracle(torch.nn.Module):
        def forward(self, x_in, timestep, **_):
            idx = timestep.round().long()
            return type("O", (), {"sample": schedule.target(x0, eps, idx)})()

    sigma = schedule.sigmas[t]
    den = KarrasDenoiser(Oracle(), schedule)
    x = x0 + sigma.view(-1, 1, 1, 1, 1) * eps
    torch.testing.assert_close(den(x, sigma), x0, atol=1e-4, rtol=1e-4)
    # and the training-side map: x_t = c_in * x
    x_t = schedule.add_noise(x0, eps, t)
    torch.testing.assert_close(x_t, x / (sigma**2 + 1).sqrt().view(-1, 1, 1, 1, 1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_samplers_reach_the_data_distribution(name):
    """Gaussian data N(0, s²) has the exact denoiser D(x, σ) = x s² / (s² + σ²)."""
    from talk.models.denoiser_config import DiffusionConfig

    s = 0.5
    schedule = NoiseSchedule(DiffusionConfig())  # 1000 steps: σ_max ≈ 14.6 >> s

    def model(x, sigma, **_):
        sg = sigma.view(-1, *([1] * (x.dim() - 1)))
        return x * s**2 / (s**2 + sg**2)

    noise = torch.randn(4000, 1, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    first_order = name.startswith("euler")
    sigmas = get_sigmas(schedule, 100 if first_order else 30, "karras")
    out = sample(model, noise, sigmas, name, generator=torch.Generator().manual_seed(1))
    assert out.std().item() == pytest.approx(s * noise.std().item(), rel=0.04 if first_order else 0.01)
    assert sigmas[-1] == 0 and torch.all(sigmas[:-1] > 0)
    uniform = get_sigmas(schedule, 10, "uniform")
    assert uniform[0] == pytest.approx(schedule.sigma_max, rel=1e-4)
    assert torch.all(uniform[:-2] > uniform[1:-1])


# --------------------------------------------------------------------------------------------
# Training


@pytest.mark.parametrize("backbone", ["frame", "clip"])
def test_one_step_lowers_the_loss_on_a_fixed_batch(backbone):
    frames = 2 if backbone == "clip" else 1
    model = _model(backbone, frames).train()
    schedule = NoiseSchedule(model.spec.diffusion)
    g = torch.Generator().manual_seed(0)
    x0 = _x(4, frames)
    noise, t = torch.randn(x0.shape, generator=g), torch.randint(0, 100, (4,), generator=g)
    cond = batch(4, frames)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def loss():
        out = training_loss(model, schedule, x0, noise, t, cond, min_snr_gamma=5.0)
        return out.loss + out.vq_loss

    before = loss()
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = loss()
    assert after.item() < before.item()


def test_min_snr_weights():
    schedule = NoiseSchedule(tiny_spec().diffusion)
    t = torch.arange(100)
    w = schedule.loss_weight(t, 5.0)
    snr = schedule.snr(t)
    torch.testing.assert_close(w, snr.clamp(max=5) / (snr + 1))  # v-prediction (default)
    assert torch.all(schedule.loss_weight(t, 0.0) == 1)


LOOP_KEYS = {f.name for f in dataclasses.fields(LoopConfig)}


def _stage_cfg(tmp_path, **kw):
    """A tiny train_diffusion run: its Config (loop keys in ``kw`` go to ``loop``) and folders."""
    from talk.inference.settings import SamplingConfig
    from talk.training.diffusion import PreviewConfig, TrainDiffusionConfig

    loop = dict(steps=4, batch_size=4, lr=1e-3, warmup_steps=2, checkpoint_every=2, keep_checkpoints=2, log_every=1,
                ema_decay=0.9)
    loop.update({k: v for k, v in kw.items() if k in LOOP_KEYS})
    cfg = TrainDiffusionConfig(loop=LoopConfig(**loop), val_batches=1, preview=PreviewConfig(samples=2),
                               sampling=SamplingConfig(steps=3))
    return types.SimpleNamespace(cfg=cfg, out=tmp_path / "out", work=tmp_path / "work")


def _train(tmp_path, run, export=False):
    from talk.artifacts.prior import ClipEmbeddings
    from talk.training.diffusion import train

    data = ToyWindows(12)
    tmp_path.mkdir(parents=True, exist_ok=True)
    emb = ClipEmbeddings(write_embeddings(tmp_path / "emb.npz", data))
    torch.manual_seed(0)
    spec = tiny_spec()
    return train(run.cfg, spec, make_bank(), emb, data, ToyWindows(4, seed=1), lambda d: (lambda s: ToySampler(d, 0, s)),
                 seed=0, out=run.out, work=run.work, device="cpu", export=export)


def test_resume_gives_the_same_weights_as_one_run(tmp_path):
    straight = _train(tmp_path / "a", _stage_cfg(tmp_path / "a"))["trainer"]
    half = _train(tmp_path / "b", _stage_cfg(tmp_path / "b", steps=2))["trainer"]
    assert half.step == 2
    resumed = _train(tmp_path / "b", _stage_cfg(tmp_path / "b", steps=4))["trainer"]
    assert resumed.resumed_from is not None and resumed.resumed_from.name == "step-0000002"
    assert resumed.step == 4
    a, b = straight.unwrapped.state_dict(), resumed.unwrapped.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)
    ea, eb = straight.ema.model.state_dict(), resumed.ema.model.state_dict()
    for k in ea:
        torch.testing.assert_close(ea[k], eb[k], atol=1e-6, rtol=0, msg=k)
    # keep_checkpoints=2 of steps 2, 4; a changed hyperparameter starts a separate run
    assert [p.name for p in resumed.checkpoints()] == ["step-0000002", "step-0000004"]
    other = _train(tmp_path / "b", _stage_cfg(tmp_path / "b", steps=2, lr=5e-4))["trainer"]
    assert other.resumed_from is None and other.run_dir != resumed.run_dir


def test_checkpoint_files_are_safetensors_and_json(tmp_path):
    trainer = _train(tmp_path, _stage_cfg(tmp_path, steps=2))["trainer"]
    ckpt = trainer.checkpoints()[-1]
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "ema.safetensors", "model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"]
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 2 and state["config"]["spec"]["latent_channels"] == C
    assert "lr_scheduler" in state and "param_groups" in state["optimizer"]


def test_stage_export_and_load_round_trip(tmp_path):
    from talk.artifacts.denoiser import load_denoiser

    cfg = _stage_cfg(tmp_path, steps=3)
    result = _train(tmp_path, cfg, export=True)
    out = cfg.out
    assert {"config.json", "model.safetensors", "scheduler_config.json"} <= {p.name for p in out.iterdir()}
    metrics = json.loads((cfg.work / "metrics.json").read_text())
    assert metrics["steps"] == 3 and len(metrics["val"]["per_t"]) == 4
    assert "latent_psnr" in metrics["preview"]
    assert (cfg.work / "live" / "plots" / "metrics" / "train" / "loss.tsv").is_file()
    loaded = load_denoiser(out)
    ema = result["trainer"].final_model.eval()
    x, t, cond = _x(), torch.tensor([3.0, 50.0]), batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, **cond).sample, ema(x, t, **cond).sample)
    from diffusers import DDPMScheduler

    assert DDPMScheduler.from_pretrained(str(out)).config.num_train_timesteps == 100


def test_clip_backbone_starts_from_local_pretrained_weights(tmp_path):
    from diffusers import UNetSpatioTemporalConditionModel

    from talk.artifacts.denoiser import build_denoiser, pretrained_backbone
    from talk.models.denoiser import backbone_config

    spec = tiny_spec("clip", 2)
    svd_like = UNetSpatioTemporalConditionModel.from_config({**backbone_config(spec), "in_channels": 2 * C})
    svd_like.save_pretrained(tmp_path / "svd" / "unet")
    spec = dataclasses.replace(spec, denoiser=dataclasses.replace(spec.denoiser, pretrained=str(tmp_path / "svd")))
    model = build_denoiser(spec, make_bank(), pretrained_backbone(spec))
    w = model.backbone.conv_in.weight
    assert w.shape[1] == (2 + M) * C and model.spec.unet["in_channels"] == (2 + M) * C
    torch.testing.assert_close(w[:, : 2 * C], svd_like.conv_in.weight)
    assert torch.all(w[:, 2 * C :] == 0)
    torch.testing.assert_close(model.backbone.down_blocks[0].resnets[0].spatial_res_block.conv1.weight,
                               svd_like.down_blocks[0].resnets[0].spatial_res_block.conv1.weight)


# --------------------------------------------------------------------------------------------
# Emotion discrimination


def test_class_targets():
    emotion, level = torch.tensor([0, 1, 7, -1, 3]), torch.tensor([0, 1, 3, 0, 0])
    joint, valid = class_targets(emotion, level, "joint")
    assert joint[:3].tolist() == [0, 1, 21] and valid.tolist() == [True, True, True, False, False]
    emo, valid = class_targets(emotion, level, "emotion")
    assert emo[:3].tolist() == [0, 1, 7] and valid.tolist() == [True, True, True, False, True]


def test_discriminator_learns_a_separable_problem():
    torch.manual_seed(0)
    disc = EmotionDiscriminator(DiscriminatorConfig(classes="emotion", hidden=32, time_embed_dim=16), in_channels=8)
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (96,), generator=g)
    centres = torch.randn(3, 8, generator=g) * 2
    feats = centres[labels][:, None, :, None, None] + 0.3 * torch.randn(96, 1, 8, 2, 2, generator=g)  # (B, F, C, h, w)
    t = torch.randint(0, 1000, (96,), generator=g).float()
    opt = torch.optim.AdamW(disc.parameters(), lr=3e-3)
    valid = torch.ones(96, dtype=torch.bool)
    for _ in range(60):
        loss = disc.loss(disc(feats, t), labels, valid)
        opt.zero_grad()
        loss.backward()
        opt.step()
    acc = (disc(feats, t).argmax(1) == labels).float().mean()
    assert acc == 1.0 and loss.item() < 0.1


def test_finetune_disc_end_to_end(tmp_path):
    from talk.artifacts.denoiser import load_denoiser, load_discriminator
    from talk.artifacts.prior import ClipEmbeddings
    from talk.inference.settings import SamplingConfig
    from talk.training.diffusion import ObjectiveConfig, PreviewConfig
    from talk.training.discriminator import FinetuneDiscConfig, finetune

    cfg = _stage_cfg(tmp_path / "diff", steps=3)
    _train(tmp_path / "diff", cfg, export=True)
    denoiser = load_denoiser(cfg.out)
    data = ToyWindows(12)
    emb = ClipEmbeddings(tmp_path / "diff" / "emb.npz")
    loop = LoopConfig(steps=2, batch_size=4, warmup_steps=1, checkpoint_every=2, log_every=1, ema_decay=0.0)
    ft = FinetuneDiscConfig(loop=loop, judge_steps=3, judge_t_max=50, disc_weight=1.0, val_batches=1,
                            preview=PreviewConfig(samples=0))
    ft_out, ft_work = tmp_path / "out", tmp_path / "work"
    disc_cfg = DiscriminatorConfig(classes="joint", hidden=16, time_embed_dim=8)
    objective = ObjectiveConfig()
    result = finetune(ft, denoiser, objective, disc_cfg, emb, data, ToyWindows(4, seed=1),
                      lambda d: (lambda s: ToySampler(d, 0, s)), 0, ft_out, ft_work, SamplingConfig(steps=2), device="cpu")
    assert result["judge"].step == 3 and result["tuner"].step == 2
    metrics = json.loads((ft_work / "metrics.json").read_text())
    acc = metrics["judge_val_accuracy"]
    assert [k for k in acc if k.startswith("t")] == ["t0-24", "t25-49", "t50-74", "t75-99"]
    assert all(0.0 <= acc[k] <= 1.0 for k in acc if k.startswith("t")) and acc["n"] == 4
    assert set(metrics["generated_accuracy"]) == {"before", "after"}
    tuned = load_denoiser(ft_out)  # same loadable format as train_diffusion's
    assert tuned.spec == denoiser.spec
    disc = load_discriminator(ft_out)
    torch.testing.assert_close(disc.state_dict()["proj.weight"], result["discriminator"].state_dict()["proj.weight"])
    # the fine-tuning changed the denoiser
    start = load_denoiser(cfg.out).state_dict()
    moved = [k for k, v in tuned.state_dict().items() if not torch.equal(v, start[k])]
    assert any(k.startswith("backbone.") for k in moved)
    # re-running resumes both phases at their end: nothing left to do
    again = finetune(ft, load_denoiser(cfg.out), objective, disc_cfg, emb, data, ToyWindows(4, seed=1),
                     lambda d: (lambda s: ToySampler(d, 0, s)), 0, ft_out, ft_work, SamplingConfig(steps=2), device="cpu")
    assert again["judge"].resumed_from is not None and again["tuner"].resumed_from is not None
    assert again["tuner"].step == 2


@pytest.mark.slow
def test_cli_train_diffusion_then_finetune_disc(tmp_path, runner, monkeypatch):
    """Both stages through `talk` on the real data readers (latent cache, dataset, prior folder)."""
    from denoiser_fixture import make_pipeline_inputs

    from talk.artifacts.denoiser import load_denoiser, load_discriminator
    from talk.cli.main import app

    params = make_pipeline_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train-diffusion", "--params", str(params)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "diffusion"
    assert {"config.json", "model.safetensors", "scheduler_config.json", "params.yaml"} <= {p.name for p in out.iterdir()}
    images = list((tmp_path / "diffusion_train" / "live" / "plots" / "images" / "samples").glob("*.png"))
    assert len(images) == 1  # decoded with the VAE: [reference | sample | ground truth] rows
    metrics = json.loads((tmp_path / "diffusion_train" / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["val"]["loss"] > 0
    model = load_denoiser(out)
    assert model.spec.latent_size == S and model.spec.audio_layers == 2

    result = runner.invoke(app, ["finetune-disc", "--params", str(params)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "finetune_disc_train" / "metrics.json").read_text())
    assert metrics["judge_val_accuracy"]["n"] > 0
    load_denoiser(tmp_path / "finetune_disc")
    load_discriminator(tmp_path / "finetune_disc")

    # a bad input is one line and exit 2
    result = runner.invoke(app, ["train-diffusion", "--params", str(params), "--set", f"paths.prior={tmp_path / 'nope'}"])
    assert result.exit_code == 2 and "Traceback" not in result.output and "pretrain-prior" in result.output


# --------------------------------------------------------------------------------------------
# The training loop (talk/training/trainer.py): divergence, schedules, early stopping


class _Line(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))

    def forward(self, x):
        return (self.w * x).sum()


def _line_trainer(tmp_path, stopper=None, **loop):
    from talk.training.trainer import Trainer

    cfg = LoopConfig(**{"steps": 6, "batch_size": 1, "warmup_steps": 0, "checkpoint_every": 2, "ema_decay": 0.0,
                        "log_every": 1, **loop})
    torch.manual_seed(0)
    return Trainer(cfg, _Line(), tmp_path / "ckpt", {"test": 1}, seed=0, device="cpu", name="line", stopper=stopper)


def _ones():
    while True:
        yield {"x": torch.ones(3)}


def test_a_non_finite_loss_stops_training_naming_the_step_and_terms(tmp_path):
    from talk.core.errors import TalkError
    from talk.training.trainer import StepResult

    def loss_fn(model, batch, g, step):
        value = model(batch["x"]) * (float("nan") if step == 2 else 1.0)
        return StepResult(value, {"mse": float(value.detach()), "vq_loss": 0.5})

    trainer = _line_trainer(tmp_path)
    with pytest.raises(TalkError, match=r"step 3 \(total=nan, mse=nan, vq_loss=0.5\)") as e:
        trainer.fit(_ones(), loss_fn)
    assert "line:" in str(e.value) and trainer.step == 2
    assert [p.name for p in trainer.checkpoints()] == ["step-0000002"]  # nothing saved after the bad step


def test_changing_steps_of_a_cosine_run_is_refused(tmp_path):
    from talk.core.errors import TalkError
    from talk.training.trainer import StepResult

    def loss_fn(model, batch, g, step):
        return StepResult(model(batch["x"]) ** 2, {})

    _line_trainer(tmp_path, lr_schedule="cosine").fit(_ones(), loss_fn)
    with pytest.raises(TalkError, match=r"cosine learning-rate schedule that ends at steps=6; steps=9"):
        _line_trainer(tmp_path, lr_schedule="cosine", steps=9)
    assert _line_trainer(tmp_path, lr_schedule="cosine").step == 6  # the same steps still resume
    _line_trainer(tmp_path / "constant").fit(_ones(), loss_fn)
    assert _line_trainer(tmp_path / "constant", steps=9).step == 6  # constant: raising steps continues the run


def test_early_stopping_never_keeps_a_nan_validation_and_stays_stopped(tmp_path):
    from talk.training.trainer import EarlyStopping, StepResult

    losses = iter([1.0, float("nan"), 0.5, 0.7, 0.6, 0.9, 0.8, 0.8, 0.8])
    seen = []

    def validate(model):
        seen.append(float(model.w[0].detach()))
        return next(losses)

    def loss_fn(model, batch, g, step):
        return StepResult(model(batch["x"]) ** 2, {"loss": 1.0})

    stopper = EarlyStopping(every=1, patience=3)
    trainer = _line_trainer(tmp_path, stopper=stopper, steps=20)
    trainer.fit(_ones(), loss_fn, validate=validate)
    # step 1: 1.0 best; 2: NaN (never best, no improvement); 3: 0.5 best; 4-6: no improvement -> stop at 6
    assert (stopper.best_step, stopper.best_loss, stopper.stopped, trainer.step) == (3, 0.5, True, 6)
    best_w = seen[2]
    stopper.restore(trainer.final_model)
    assert float(trainer.final_model.w[0]) == pytest.approx(best_w)
    again_stopper = EarlyStopping(every=1, patience=3)
    again = _line_trainer(tmp_path, stopper=again_stopper, steps=20)
    assert again.step == 6 and again_stopper.stopped and again_stopper.best_step == 3
    again.fit(_ones(), loss_fn, validate=validate)  # a stopped run stays stopped
    assert again.step == 6
    again_stopper.restore(again.final_model)
    assert float(again.final_model.w[0]) == pytest.approx(best_w)
    assert [r["step"] for r in again.history if "val_loss" in r] == [1, 2, 3, 4, 5, 6]


def test_no_validation_data_never_stops(tmp_path):
    from talk.training.trainer import EarlyStopping, StepResult

    stopper = EarlyStopping(every=1, patience=1)
    trainer = _line_trainer(tmp_path, stopper=stopper)
    trainer.fit(_ones(), lambda m, b, g, s: StepResult(m(b["x"]) ** 2, {}), validate=lambda m: None)
    assert trainer.step == 6 and not stopper.stopped and stopper.best_step is None


def test_saved_spec_loads_strictly(tmp_path):
    from talk.core.errors import TalkError
    from talk.models.denoiser import DenoiserSpec
    from talk.models.errors import ConfigError

    run = _stage_cfg(tmp_path, steps=1)
    _train(tmp_path, run, export=True)
    d = tiny_spec().to_dict()
    assert DenoiserSpec.from_dict(d) == tiny_spec()
    with pytest.raises(ConfigError, match=r"spec.denoiser: unknown keys \['widths'\]"):
        DenoiserSpec.from_dict({**d, "denoiser": {**d["denoiser"], "widths": [1]}})
    with pytest.raises(ConfigError, match=r"spec: missing keys \['style_dim'\]"):
        DenoiserSpec.from_dict({k: v for k, v in d.items() if k != "style_dim"})
    from talk.artifacts.denoiser import load_denoiser

    config = json.loads((run.out / "config.json").read_text())
    for broken in ({**config, "spec": {**config["spec"], "diffusion": {k: v for k, v in config["spec"]["diffusion"].items()
                                                                          if k != "prediction_type"}}},
                   {**config, "emotion_bank": {**config["emotion_bank"], "extra": 1}},
                   {**config, "spec": {**config["spec"], "conditioning": {**config["spec"]["conditioning"], "typo": 2}}}):
        (run.out / "config.json").write_text(json.dumps(broken))
        with pytest.raises(TalkError, match="config.json.*(missing|unknown) keys"):
            load_denoiser(run.out)
