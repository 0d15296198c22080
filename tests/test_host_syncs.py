"""What keeps a GPU busy in the render loop and the training step (issue 18), checked on the CPU:
one device-to-host read-back per training step, guidance plans built once per call pattern (no
host-to-device copies per step), and the render's autocast (``render.precision``) that leaves the
float32 CPU path as it was."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from denoiser_fixture import ToySampler, ToyWindows, make_bank, tiny_spec, write_embeddings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OURS = ("talk", "models", "stages", "cli")  # the project's code folders (not tests/, not .venv/)
READ_BACKS = ("item", "tolist", "__bool__", "__float__", "__int__", "numpy")  # each one a sync on a GPU


@pytest.fixture
def host_reads(monkeypatch):
    """Names of the Tensor read-backs called from the project's own code (not torch's internals)."""
    calls: list[str] = []
    for name in READ_BACKS:
        orig = getattr(torch.Tensor, name)

        def spy(self, *a, _orig=orig, _name=name, **k):
            caller = Path(sys._getframe(1).f_code.co_filename).resolve()
            if ROOT in caller.parents and caller.relative_to(ROOT).parts[0] in OURS:
                calls.append(f"{_name} ({caller.name}:{sys._getframe(1).f_lineno})")
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    return calls


@pytest.fixture(scope="module")
def clip_pipe(tmp_path_factory):
    """A TalkPipeline over stand-in artefacts with the clip (spatio-temporal) backbone, F = 3."""
    from render_fixture import Sizes, make_artifacts

    from talk.inference.pipeline import TalkPipeline

    root = tmp_path_factory.mktemp("clip")
    arts = make_artifacts(root, Sizes(backbone="clip", target_frames=3, unet_channels=(32, 32)))
    return TalkPipeline.load(arts["vae"], arts["prior"], arts["denoiser"], cache_dir=root / "cache")


def test_a_training_step_reads_back_from_the_device_once(tmp_path, host_reads):
    from talk.artifacts.denoiser import build_denoiser
    from talk.artifacts.prior import ClipEmbeddings
    from talk.models.denoiser import make_schedule
    from talk.training.diffusion import Objective, ObjectiveConfig
    from talk.training.trainer import LoopConfig, Trainer

    data = ToyWindows(8)
    emb = ClipEmbeddings(write_embeddings(tmp_path / "emb.npz", data))
    torch.manual_seed(0)
    model = build_denoiser(tiny_spec(), make_bank())
    trainer = Trainer(LoopConfig(steps=3, batch_size=4, grad_clip=1.0, ema_decay=0.9), model, tmp_path / "ck", {}, 0, "cpu")
    objective = Objective(ObjectiveConfig(), make_schedule(model.spec), emb, style=True)
    batches = trainer.batches(data, lambda s: ToySampler(data, 0, s))
    trainer.train_step(next(batches), objective)
    batch = next(batches)
    host_reads.clear()
    logs = trainer.train_step(batch, objective)
    assert host_reads == [host_reads[0]] and host_reads[0].startswith("tolist (trainer.py"), host_reads
    assert set(logs) == {"loss", "vq_loss", "grad_norm", "lr"} and all(isinstance(v, float) for v in logs.values())


def test_guidance_plans_are_built_once_per_call_pattern():
    from talk.models.sampling import GuidedDenoiser

    class Net(torch.nn.Module):
        def forward(self, x, sigma, keep, audio):
            on = torch.stack([keep[c] for c in ("ref", "audio", "emotion")], 1).float()  # (R, 3)
            return x * (1 + on.sum(1)).view(-1, 1) + audio

    scales = {"ref": 1.5, "audio": 2.0, "emotion": 3.0}
    guided = GuidedDenoiser(Net(), scales, steps={1})
    x, sigma, audio = torch.randn(3, 4), torch.ones(3), torch.randn(3, 4)
    first = guided(x, sigma, guided=[True, False, True], audio=audio)
    plan = guided.plan((True, False, True), x.device)
    again = guided(x, sigma, guided=[True, False, True], audio=audio)
    assert guided.plan((True, False, True), x.device)[0] is plan[0]  # reused, not rebuilt
    fresh = GuidedDenoiser(Net(), scales, steps={1})(x, sigma, guided=[True, False, True], audio=audio)
    assert torch.equal(first, again) and torch.equal(first, fresh)
    guided.at_step(0)(x, sigma, audio=audio)
    guided.at_step(1)(x, sigma, audio=audio)
    assert len(guided._plans) == 3  # the mixed pattern, all-plain, all-guided


def test_render_precision_auto_is_float32_on_the_cpu_and_bf16_on_cuda():
    from talk.inference.config import compute_dtype

    assert compute_dtype("auto", "cpu") is None and compute_dtype("float32", "cuda") is None
    assert compute_dtype("auto", "cuda") == "bfloat16" and compute_dtype("auto", "cuda:1") == "bfloat16"
    assert compute_dtype("bfloat16", "cpu") == "bfloat16" and compute_dtype("float16", "cuda") == "float16"


def test_bf16_render_runs_the_denoiser_under_autocast_and_keeps_float32_latents(clip_pipe):
    from render_fixture import portrait, speech

    from talk.inference.pipeline import Autocast

    pipe = clip_pipe
    seen = []
    hook = pipe.karras.net.register_forward_hook(lambda m, a, o: seen.append((torch.is_autocast_enabled("cpu"), o.sample.dtype)))
    kw = dict(crop=False, show_progress=False, steps=2, schedule="window")
    plain = pipe(portrait(32), speech(0.3), emotion="happy", **kw)
    assert seen and all(not on and dt == torch.float32 for on, dt in seen)
    seen.clear()
    low = pipe(portrait(32), speech(0.3), emotion="happy", precision="bfloat16", **kw)
    assert seen and all(on and dt == torch.bfloat16 for on, dt in seen)
    assert low.shape == plain.shape and np.abs(low.astype(int) - plain.astype(int)).mean() < 8
    sp = pipe.spec
    ref, feats = torch.zeros(sp.latent_channels, sp.latent_size, sp.latent_size), torch.zeros(6, sp.audio_layers, sp.audio_dim).half()
    lat = next(iter(pipe.generate_latents(ref, feats, 3, torch.zeros(sp.emotion_dim), None,
                                          pipe.settings.replace(precision="bfloat16", steps=2, schedule="window"))))[1]
    assert lat.dtype == torch.float32
    hook.remove()
    wrapped = Autocast(pipe.guided({"ref": 1.0}, False), "cpu", "bfloat16")
    assert wrapped.guided_at(0) is True


def test_a_window_render_reads_nothing_back_per_step(clip_pipe, host_reads):
    """The sampling loop of a window (clip backbone) never waits for the device: host reads happen a
    fixed number of times per window, whatever the number of steps, for every sampler."""
    pipe, sp = clip_pipe, clip_pipe.spec
    ref, feats = torch.randn(sp.latent_channels, sp.latent_size, sp.latent_size), torch.randn(12, sp.audio_layers, sp.audio_dim).half()
    for sampler in ("euler", "heun", "dpmpp_2m", "euler_ancestral"):
        counts = []
        for steps in (2, 5):
            host_reads.clear()
            s = pipe.settings.replace(sampler=sampler, steps=steps, schedule="window", guidance_ref=1.5)
            list(pipe.generate_latents(ref, feats, 6, torch.zeros(sp.emotion_dim), None, s))
            counts.append(list(host_reads))
        assert len(counts[0]) == len(counts[1]), (sampler, counts)
