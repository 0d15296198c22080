"""models/sampling.py: guidance rows, the guidance interval, and which guidance each sampler evaluation gets."""

from __future__ import annotations

import pytest
import torch

from talk.models.sampling import SAMPLERS, GuidedDenoiser, guidance_interval, sample


class Recorder(torch.nn.Module):
    """D(x, σ) = x + 10·keep_ref + 100·keep_audio per row; records the rows of every call."""

    def __init__(self):
        super().__init__()
        self.calls: list[int] = []

    def forward(self, x, sigma, keep=None, **cond):
        self.calls.append(x.shape[0])
        keep = keep or {}
        on = {c: keep.get(c, torch.ones(x.shape[0], dtype=torch.bool)).float().view(-1, *([1] * (x.dim() - 1)))
              for c in ("ref", "audio")}
        return x + 10 * on["ref"] + 100 * on["audio"]


def test_guided_and_unguided_rows_in_one_forward():
    model = Recorder()
    guided = GuidedDenoiser(model, {"ref": 2.0, "audio": 3.0}, ("ref", "audio"))  # weights -1, -1, 3
    x = torch.zeros(3, 2)
    out = guided(x, torch.ones(3), guided=[True, False, True], keep={"ref": torch.tensor([True, True, False])})
    assert model.calls == [3 + 1 + 3]  # guided rows: 3 branches each; the unguided one: 1
    torch.testing.assert_close(out[:, 0], torch.tensor([320.0, 110.0, 300.0]))  # row 2: ref absent in every branch
    torch.testing.assert_close(guided(x, torch.ones(3))[:, 0], torch.full((3,), 320.0))  # default: every row guided


def test_guidance_interval_steps():
    assert guidance_interval(5, 0.2, 0.8) == {1, 2, 3}
    assert guidance_interval(6, 0.25, 0.75) == {1, 2, 3}
    assert guidance_interval(4, 0.5, 0.5) == set()
    assert guidance_interval(3, 0.0, 1.0) == {0, 1, 2}
    g = GuidedDenoiser(Recorder(), {"ref": 2.0}, ("ref",), steps={1})
    assert [g.guided_at(i) for i in range(3)] == [False, True, False]
    assert GuidedDenoiser(Recorder(), {"ref": 2.0}, ("ref",)).guided_at(7)  # no interval: every step


def test_heun_corrector_gets_the_guidance_of_its_own_step():
    """Heun's corrector of step i runs at σ_{i+1}, the noise level of step i+1: it must still get step
    i's guidance (a wrapper deciding by σ gave it step i+1's)."""
    model = Recorder()
    guided = GuidedDenoiser(model, {"ref": 2.0}, ("ref",), steps={1})  # 2 branches on step 1 only
    sigmas = torch.tensor([4.0, 2.0, 1.0, 0.0])
    sample(guided, torch.zeros(1, 2), sigmas, "heun")
    # step 0: predictor + corrector unguided; step 1: both guided; step 2: Euler to σ = 0, unguided
    assert model.calls == [1, 1, 2, 2, 1]


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_follows_the_interval(name):
    model = Recorder()
    guided = GuidedDenoiser(model, {"ref": 2.0}, ("ref",), steps={0, 2})
    sample(guided, torch.zeros(1, 2), torch.tensor([4.0, 2.0, 1.0, 0.0]), name, generator=torch.Generator().manual_seed(0))
    per_step = {"heun": [2, 2, 1, 1, 2]}.get(name, [2, 1, 2])
    assert model.calls == per_step
