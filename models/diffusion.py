"""Noise schedule, training loss and the k-diffusion-style denoiser wrapper.

The network is trained in the discrete variance-preserving form of DDPM (Ho et al. 2020):
``x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε`` with ᾱ from a diffusers scheduler's betas, predicting ε or
v = √ᾱ ε − √(1-ᾱ) x0 (Salimans & Ho 2022), optionally with min-SNR loss weights
(Hang et al. 2023) and offset noise. Sampling sees it through ``KarrasDenoiser`` (k-diffusion
``DiscreteEpsDDPMDenoiser`` / ``DiscreteVDDPMDenoiser``): a function of the variance-exploding
input ``x = x0 + σ ε`` and σ = √((1-ᾱ)/ᾱ) returning the denoised estimate, so every sampler in
models/sampling.py works on any parameterisation.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from talk.models.denoiser_config import DiffusionConfig


def make_scheduler(cfg: DiffusionConfig):
    """The diffusers scheduler named by ``cfg.scheduler`` (its betas define the schedule)."""
    from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler

    classes = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "euler": EulerDiscreteScheduler}
    if cfg.scheduler not in classes:
        raise ValueError(f"unknown scheduler {cfg.scheduler!r}; choose one of {', '.join(classes)}")
    return classes[cfg.scheduler](
        num_train_timesteps=cfg.num_train_timesteps,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        beta_schedule=cfg.beta_schedule,
        prediction_type=cfg.prediction_type,
    )


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape[0], *([1] * (like.dim() - 1))).to(like.dtype)


class NoiseSchedule(nn.Module):
    """ᾱ_t of a discrete schedule, and the maps between index t, σ and the UNet's timestep input."""

    def __init__(self, cfg: DiffusionConfig):
        super().__init__()
        self.cfg = cfg
        ac = make_scheduler(cfg).alphas_cumprod.to(torch.float64)  # (T,)
        self.register_buffer("alphas_cumprod", ac.float(), persistent=False)
        sigmas = ((1 - ac) / ac).sqrt()
        self.register_buffer("sigmas", sigmas.float(), persistent=False)  # (T,) increasing
        self.register_buffer("log_sigmas", sigmas.log().float(), persistent=False)

    @property
    def num_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ x0 + √(1-ᾱ) ε; t (B,) integer indices."""
        ac = _bcast(self.alphas_cumprod[t], x0)
        return ac.sqrt() * x0 + (1 - ac).sqrt() * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network regresses: ε, or v = √ᾱ ε − √(1-ᾱ) x0."""
        if self.cfg.prediction_type == "epsilon":
            return noise
        ac = _bcast(self.alphas_cumprod[t], x0)
        return ac.sqrt() * noise - (1 - ac).sqrt() * x0

    def predict_x0(self, x_t: torch.Tensor, pred: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The clean latent implied by the network output at (x_t, t)."""
        ac = _bcast(self.alphas_cumprod[t], x_t)
        if self.cfg.prediction_type == "epsilon":
            return (x_t - (1 - ac).sqrt() * pred) / ac.sqrt()
        return ac.sqrt() * x_t - (1 - ac).sqrt() * pred

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        ac = self.alphas_cumprod[t]
        return ac / (1 - ac)

    def loss_weight(self, t: torch.Tensor, min_snr_gamma: float) -> torch.Tensor:
        """Min-SNR-γ weights (Hang et al. 2023, eq. 7) expressed for the ε / v targets; γ ≤ 0: ones."""
        if min_snr_gamma <= 0:
            return torch.ones_like(self.alphas_cumprod[t])
        snr = self.snr(t)
        clipped = snr.clamp(max=min_snr_gamma)
        return clipped / snr if self.cfg.prediction_type == "epsilon" else clipped / (snr + 1)

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional schedule index of σ, interpolating in log σ (k-diffusion DiscreteSchedule)."""
        log_sigma = sigma.float().clamp(min=1e-10).log()
        dists = log_sigma[:, None] - self.log_sigmas[None, :]  # (B, T)
        low = dists.ge(0).cumsum(dim=1).argmax(dim=1).clamp(max=self.num_timesteps - 2)
        low_s, high_s = self.log_sigmas[low], self.log_sigmas[low + 1]
        w = ((low_s - log_sigma) / (low_s - high_s)).clamp(0, 1)
        return (1 - w) * low + w * (low + 1)

    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        """The UNet's timestep input for (fractional) indices t: t itself, or 0.25·ln σ (SVD/EDM)."""
        t = t.float()
        if self.cfg.timestep_input == "index":
            return t
        lo = t.floor().long().clamp(0, self.num_timesteps - 1)
        hi = (lo + 1).clamp(max=self.num_timesteps - 1)
        w = t - lo
        return 0.25 * ((1 - w) * self.log_sigmas[lo] + w * self.log_sigmas[hi])


def sample_noise(shape, generator: torch.Generator | None, device, offset: float = 0.0) -> torch.Tensor:
    """Gaussian noise, plus offset noise (Guttenberg 2023): a per-(sample, channel) constant.

    ``shape`` is (B, F, C, h, w); the offset is shared by the frames of a window.
    """
    noise = torch.randn(shape, generator=generator, device=device)
    if offset > 0:
        b, _, c = shape[:3]
        noise = noise + offset * torch.randn((b, 1, c, 1, 1), generator=generator, device=device)
    return noise


@dataclasses.dataclass
class LossOutput:
    loss: torch.Tensor  # scalar: weighted denoising loss (mean over the batch)
    per_sample: torch.Tensor  # (B,) unweighted MSE per sample
    x_t: torch.Tensor  # (B, F, C, h, w) noisy input
    x0_pred: torch.Tensor  # (B, F, C, h, w) clean latent implied by the prediction
    vq_loss: torch.Tensor  # scalar: the Emotion Bank's VQ loss of this forward
    features: torch.Tensor | None  # (B, F, Cm, h', w') mid-block features, when asked for


def residual_base(net: nn.Module, cond: dict, like: torch.Tensor) -> torch.Tensor | float:
    """What a residual denoiser's output is relative to: the reference latent (B, 1, C, h, w), else 0."""
    spec = getattr(net, "spec", None)
    if not getattr(spec, "residual", False):
        return 0.0
    return cond["ref"][:, None].to(like.dtype)


def training_loss(
    net: nn.Module,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    cond: dict,
    min_snr_gamma: float = 0.0,
    features: bool = False,
    pixel_weight: torch.Tensor | None = None,
) -> LossOutput:
    """Denoising loss of ``net`` on clean latents x0 (B, F, C, h, w) at schedule indices t (B,).

    A residual net (``net.spec.residual``) denoises x0 − ref (``cond["ref"]``); ``x_t`` is then the
    noisy residual and ``x0_pred`` the frame (ref added back). ``pixel_weight`` (B, F, 1, h, w)
    weights the squared error per latent pixel (face / lip weighting); ``per_sample`` stays the
    unweighted MSE.
    """
    base = residual_base(net, cond, x0)
    x0 = x0 - base
    x_t = schedule.add_noise(x0, noise, t)
    out = net(x_t, schedule.model_timestep(t), features=features, **cond)
    pred = out.sample.float()
    target = schedule.target(x0, noise, t)
    err = (pred - target).pow(2)
    per_sample = err.flatten(1).mean(1)  # (B,)
    weighted = per_sample if pixel_weight is None else (err * pixel_weight.to(err.dtype)).flatten(1).mean(1)
    weight = schedule.loss_weight(t, min_snr_gamma)
    return LossOutput(
        loss=(weight * weighted).mean(),
        per_sample=per_sample.detach(),
        x_t=x_t,
        x0_pred=schedule.predict_x0(x_t, pred, t) + base,
        vq_loss=out.vq_loss,
        features=out.features,
    )


MOUTH = slice(48, 68)  # dlib-68 outer + inner lips


def _coverage(lo: torch.Tensor, hi: torch.Tensor, n: int) -> torch.Tensor:
    """Fraction of each of n equal cells of [0, 1] inside [lo, hi]: lo, hi (...,) -> (..., n)."""
    edges = torch.arange(n + 1, device=lo.device, dtype=lo.dtype) / n
    left, right = edges[:-1], edges[1:]
    return ((torch.minimum(hi[..., None], right) - torch.maximum(lo[..., None], left)) * n).clamp(0, 1)


def _box_mask(x0, y0, x1, y1, h: int, w: int) -> torch.Tensor:
    """Area fraction of each latent pixel inside the box (fractions of the side): (...,) -> (..., h, w)."""
    return _coverage(y0, y1, h)[..., :, None] * _coverage(x0, x1, w)[..., None, :]


def face_lip_weights(landmarks: torch.Tensor, h: int, w: int, w_face: float, w_lip: float) -> torch.Tensor:
    """Per-latent-pixel loss weights from dlib-68 landmarks (Hallo's face / lip masks).

    landmarks (B, F, 68, 2) in fractions of the crop side -> (B, F, 1, h, w): 1 outside the face,
    ``w_face`` inside the face box (the landmarks' bounding box), ``w_lip`` inside the mouth box
    (the lips' centre, 1.2 x their width wide and 1.0 x it high); partly covered pixels in
    proportion to the area covered.
    """
    lm = landmarks.float()
    lo, hi = lm.amin(-2), lm.amax(-2)  # (B, F, 2)
    face = _box_mask(lo[..., 0], lo[..., 1], hi[..., 0], hi[..., 1], h, w)
    lips = lm[..., MOUTH, :]
    centre = (lips.amin(-2) + lips.amax(-2)) / 2
    width = lips[..., 0].amax(-1) - lips[..., 0].amin(-1)  # (B, F)
    hx, hy = 0.6 * width, 0.5 * width
    lip = _box_mask(centre[..., 0] - hx, centre[..., 1] - hy, centre[..., 0] + hx, centre[..., 1] + hy, h, w)
    face = torch.maximum(face, lip)  # the mouth is face
    return (1 + (w_face - 1) * face + (w_lip - w_face) * lip)[:, :, None]


class KarrasDenoiser(nn.Module):
    """k-diffusion's discrete ε/v DDPM denoiser: D(x, σ) for x = x0 + σ ε (Karras et al. 2022).

    ``c_in = 1/√(σ²+1)`` maps x back to the VP input the network was trained on; the output is
    the denoised estimate, whichever the network predicts.
    """

    def __init__(self, net: nn.Module, schedule: NoiseSchedule):
        super().__init__()
        self.net = net
        self.schedule = schedule

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **cond) -> torch.Tensor:
        """x (B, F, C, h, w), sigma (B,) -> denoised (B, F, C, h, w)."""
        s = _bcast(sigma, x)
        c_in = 1 / (s**2 + 1).sqrt()
        t = self.schedule.model_timestep(self.schedule.sigma_to_t(sigma))
        base = residual_base(self.net, cond, x)  # a residual net: sample frames, denoise x − ref
        x = x - base
        out = self.net(x * c_in, t, **cond).sample.to(x.dtype)
        if self.schedule.cfg.prediction_type == "epsilon":
            return x - s * out + base
        return x / (s**2 + 1) - s / (s**2 + 1).sqrt() * out + base
