"""Samplers (k-diffusion's signature) and multi-branch classifier-free guidance.

Every sampler is ``sample_<name>(model, x, sigmas, extra_args=None, callback=None, generator=None)``
where ``model(x, sigma, **extra_args)`` returns the denoised estimate (models.diffusion.KarrasDenoiser
or a ``GuidedDenoiser`` around it), ``x`` is the initial noise already multiplied by ``sigmas[0]``,
and ``callback`` receives ``{"x", "i", "sigma", "sigma_hat", "denoised"}`` after each step
(crowsonkb/k-diffusion sampling.py). A model that changes with the step (guidance in an interval,
``GuidedDenoiser(steps=...)``) has ``at_step(i)``; every evaluation of step i, Heun's corrector at
σ_{i+1} included, uses ``at_step(i)``.

Guidance (DICE-Talk §3.4, extended to one scale per condition): with the conditions switched on
cumulatively in the order reference, audio, emotion, style, the branches e_0 (nothing), e_1 (ref),
e_2 (ref+audio), e_3 (ref+audio+emotion), ... combine as

    e = e_0 + s_ref (e_1 − e_0) + s_audio (e_2 − e_1) + s_emotion (e_3 − e_2) + ...

Branches whose weight vanishes (equal neighbouring scales) are skipped; the rest are stacked on
the batch axis and evaluated in ONE forward per step. DICE-Talk's released setting (three
branches: nothing / image / image+audio+emotion) is s_audio = s_emotion. Guidance may be limited to
the steps of an interval (Kynkäänniemi et al. 2024); the other steps run the single
all-conditions branch, and a batch may mix guided and unguided rows (the rolling schedule's
frames sit at different steps).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import torch
from torch import nn

GUIDANCE_ORDER = ("ref", "audio", "emotion", "style")  # conditions switched on branch by branch


# --------------------------------------------------------------------------------------------
# Noise levels


def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, device="cpu") -> torch.Tensor:
    """Karras et al. 2022 eq. 5: n levels from sigma_max to sigma_min, then 0."""
    ramp = torch.linspace(0, 1, n, device=device)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def get_sigmas_uniform(schedule, n: int, device="cpu") -> torch.Tensor:
    """n levels evenly spaced in schedule index ("trailing" spacing, as DDIM), then 0."""
    t = torch.linspace(schedule.num_timesteps - 1, 0, n, device=device)
    lo = t.floor().long()
    hi = t.ceil().long()
    w = t - lo
    log_s = (1 - w) * schedule.log_sigmas[lo] + w * schedule.log_sigmas[hi]
    return torch.cat([log_s.exp(), log_s.new_zeros(1)])


def get_sigmas(schedule, n: int, kind: str = "karras", device="cpu") -> torch.Tensor:
    """Noise levels for ``n`` steps of a trained schedule (models.diffusion.NoiseSchedule)."""
    if kind == "karras":
        return get_sigmas_karras(n, schedule.sigma_min, schedule.sigma_max, device=device)
    if kind == "uniform":
        return get_sigmas_uniform(schedule, n, device=device)
    raise ValueError(f"unknown sigma spacing {kind!r}; choose karras or uniform")


# --------------------------------------------------------------------------------------------
# Samplers


def _d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """dx/dσ of the probability-flow ODE (Karras et al. 2022 eq. 4)."""
    return (x - denoised) / sigma


def _s(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return sigma * x.new_ones([x.shape[0]])


def _positive(sigmas: torch.Tensor) -> list[bool]:
    """σ_i > 0 for every level, read to the host once per sampling run: the samplers branch on it,
    and on a GPU a comparison with a device scalar in the loop would synchronise at every step."""
    return [bool(v) for v in (sigmas > 0).tolist()]


def _at(model, i: int):
    """The denoiser of step i: ``model.at_step(i)`` for step-dependent models, else ``model``."""
    at_step = getattr(model, "at_step", None)
    return model if at_step is None else at_step(i)


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, generator=None):
    """Euler steps on the probability-flow ODE (= DDIM with η = 0 for ε-models)."""
    extra_args = extra_args or {}
    for i in range(len(sigmas) - 1):
        denoised = _at(model, i)(x, _s(sigmas[i], x), **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = x + _d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, generator=None, eta: float = 1.0):
    """Ancestral Euler: a deterministic step to σ_down, then fresh noise up to σ_{i+1}."""
    extra_args = extra_args or {}
    positive = _positive(sigmas)
    for i in range(len(sigmas) - 1):
        denoised = _at(model, i)(x, _s(sigmas[i], x), **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        s, s_next = sigmas[i], sigmas[i + 1]
        sigma_up = torch.minimum(s_next, eta * (s_next**2 * (s**2 - s_next**2) / s**2).sqrt())
        sigma_down = (s_next**2 - sigma_up**2).sqrt()
        x = x + _d(x, s, denoised) * (sigma_down - s)
        if positive[i + 1]:
            x = x + torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * sigma_up
    return x


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, generator=None):
    """Heun's second-order method (Karras et al. 2022, Algorithm 1 without churn)."""
    extra_args = extra_args or {}
    positive = _positive(sigmas)
    for i in range(len(sigmas) - 1):
        model_i = _at(model, i)  # predictor and corrector: the guidance of step i
        denoised = model_i(x, _s(sigmas[i], x), **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        d = _d(x, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if not positive[i + 1]:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = _d(x_2, sigmas[i + 1], model_i(x_2, _s(sigmas[i + 1], x), **extra_args))
            x = x + (d + d_2) / 2 * dt
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, generator=None):
    """DPM-Solver++(2M) (Lu et al. 2022), as in k-diffusion."""
    extra_args = extra_args or {}
    positive = _positive(sigmas)
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = _at(model, i)(x, _s(sigmas[i], x), **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        if not positive[i + 1]:
            x = denoised
            continue
        t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
        h = t_next - t
        if old_denoised is None:
            d = denoised
        else:
            r = (t - (-sigmas[i - 1].log())) / h
            d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = (sigmas[i + 1] / sigmas[i]) * x - torch.expm1(-h) * d
        old_denoised = denoised
    return x


SAMPLERS: dict[str, Callable] = {
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
}


def get_sampler(name: str) -> Callable:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


# --------------------------------------------------------------------------------------------
# Guidance


def guidance_branches(scales: dict[str, float], order: Sequence[str] = GUIDANCE_ORDER) -> list[tuple[dict[str, bool], float]]:
    """The branches to evaluate and their weights, for one guidance scale per condition.

    Only the conditions named in ``scales`` are guided, in the order of ``order``; the others stay
    on in every branch. Branch j has the first j guided conditions on; its weight is
    s_j − s_{j+1} (s_0 = 1, s_{K+1} = 0), and zero-weight branches are dropped (so equal
    neighbouring scales merge branches, and all scales 1 is a single plain forward).
    Returns [(keep per guided condition, weight)].
    """
    unknown = set(scales) - set(order)
    if unknown:
        raise ValueError(f"no guidance for {sorted(unknown)}; guided conditions: {', '.join(order)}")
    guided = [c for c in order if c in scales]
    s = [1.0] + [float(scales[c]) for c in guided] + [0.0]
    branches = []
    for j in range(len(guided) + 1):
        w = s[j] - s[j + 1]
        if w != 0.0:
            branches.append(({c: k < j for k, c in enumerate(guided)}, w))
    return branches


def guidance_interval(steps: int, start: float, stop: float) -> set[int]:
    """Steps that run every guidance branch: step i (of ``steps``) when its centre (i + 0.5) / steps
    lies in [start, stop) (Kynkäänniemi et al. 2024, "Applying guidance in a limited interval")."""
    return {i for i in range(steps) if start <= (i + 0.5) / steps < stop}


class GuidedDenoiser(nn.Module):
    """Multi-branch guidance around a denoiser D(x, σ, **cond): one batched forward per call.

    ``model`` must accept a ``keep`` dict of (B,) bool masks (models.denoiser.TalkDenoiser via
    KarrasDenoiser). Since every branch weight multiplies a denoised estimate and the weights sum
    to 1, combining denoised estimates equals combining ε predictions.

    ``steps``: the sampler steps that are guided (``guidance_interval``; None = every step); the
    samplers take ``at_step(i)``. ``forward(..., guided=)`` mixes rows in one batch: a guided row
    contributes one stacked row per branch, an unguided one a single row with every condition on.
    """

    def __init__(self, model: nn.Module, scales: dict[str, float], order: Sequence[str] = GUIDANCE_ORDER,
                 steps: Collection[int] | None = None):
        super().__init__()
        self.model = model
        self.order = tuple(order)
        self.branches = guidance_branches(scales, order)
        self.steps = None if steps is None else frozenset(int(i) for i in steps)
        self._plans: dict = {}  # (flags, device) -> plan(): the stacked rows of one call pattern

    def guided_at(self, i: int) -> bool:
        """Whether sampler step i runs every branch."""
        return self.steps is None or i in self.steps

    def at_step(self, i: int):
        """D(x, σ, **cond) of sampler step i (guided or the single all-conditions branch)."""
        flag = self.guided_at(i)
        return lambda x, sigma, **cond: self(x, sigma, guided=flag, **cond)

    def plan(self, flags: tuple[bool, ...], device) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """(source row per stacked row (R,), branch mask per condition {c: (R,) bool}, weight per
        stacked row (R,) float32) for rows guided as ``flags``, on ``device``.

        Built once per (flags, device) and kept: the samplers call the same few patterns at every
        step, and on a GPU each rebuild would be three small blocking host-to-device copies."""
        key = (flags, str(device))
        cached = self._plans.get(key)
        if cached is not None:
            return cached
        full = [({c: True for c in self.order}, 1.0)]
        src, weight, masks = [], [], {c: [] for c in self.order}  # branch keys are a subset of the order
        for j, g in enumerate(flags):  # row j's branches, side by side
            for branch, w in self.branches if g else full:
                src.append(j)
                weight.append(w)
                for c in masks:
                    masks[c].append(branch.get(c, True))
        plan = (torch.tensor(src, device=device), {c: torch.tensor(v, device=device) for c, v in masks.items()},
                torch.tensor(weight, dtype=torch.float32, device=device))
        if len(self._plans) < 64:  # a rolling render has at most ``steps`` + 1 patterns per run
            self._plans[key] = plan
        return plan

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, keep: dict | None = None,
                guided: bool | Sequence[bool] | None = None, **cond) -> torch.Tensor:
        """x (B, ...), sigma (B,), cond tensors with batch B; ``keep`` (B,) masks of conditions absent
        for a sample (off in every branch); ``guided``: per row, or one bool for all (None = True)."""
        b = x.shape[0]
        flags = [True] * b if guided is None else [bool(guided)] * b if isinstance(guided, bool) else [bool(g) for g in guided]
        if len(flags) != b:
            raise ValueError(f"guided has {len(flags)} flags for a batch of {b}")
        idx, masks, weight = self.plan(tuple(flags), x.device)
        rows = dict(masks)
        for c, on in (keep or {}).items():  # conditions absent for a sample stay off
            on = on.to(device=x.device, dtype=torch.bool)[idx]
            rows[c] = rows[c] & on if c in rows else on
        out = self.model(x[idx], sigma[idx], keep=rows,
                         **{k: (v[idx] if isinstance(v, torch.Tensor) else v) for k, v in cond.items()})  # (R, ...)
        w = weight.to(out.dtype).view(-1, *([1] * (out.dim() - 1)))
        return torch.zeros_like(x, dtype=out.dtype).index_add_(0, idx, out * w)


def sample(
    model,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    sampler: str = "euler",
    extra_args: dict | None = None,
    callback=None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Run the named sampler from unit-variance ``noise`` (scaled here by σ_max)."""
    return get_sampler(sampler)(model, noise * sigmas[0], sigmas, extra_args, callback, generator)


def per_sample_noise(shape, seeds: Sequence[int], device="cpu") -> torch.Tensor:
    """Unit Gaussian noise with one seed per sample (results do not depend on the batch size)."""
    noise = torch.stack([torch.randn(shape[1:], generator=torch.Generator().manual_seed(int(s))) for s in seeds])
    if torch.device(device).type == "cuda":  # drawn on the CPU (device-independent); copied without blocking the host
        return noise.pin_memory().to(device, non_blocking=True)
    return noise.to(device)


__all__ = [
    "GUIDANCE_ORDER",
    "GuidedDenoiser",
    "SAMPLERS",
    "get_sampler",
    "get_sigmas",
    "guidance_branches",
    "guidance_interval",
    "per_sample_noise",
    "sample",
]
