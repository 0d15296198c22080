"""The image autoencoder of the latent diffusion backbone and its training losses.

Both methods denoise in the latent space of a KL autoencoder (Rombach et al. 2022, §3;
DICE-Talk §3.1 and SVP §3 use Stable Diffusion's VAE). The full profile loads SD's VAE from a
local folder; the default CPU profile trains a small ``diffusers.AutoencoderKL`` on the training
crops (``talk/training/vae.py``; its PSNR / SSIM: talk/evaluation/metrics/image.py), built here from ``VaeConfig``.

``VaeConfig`` (models/vae_config.py, torch-free) is ``model.vae`` in params.yaml.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from talk.models.vae_config import OWN, VaeConfig

__all__ = ["OWN", "VaeConfig", "LossWeights", "build_vae", "vae_loss", "gradient_loss", "spectrum_loss", "kl_loss"]


def build_vae(cfg: VaeConfig, image_size: int):
    """A fresh autoencoder for ``source: own``: a PatchAutoencoder (``kind: patch``, whose linear
    path ``fit_pca`` then sets from data) or a ``diffusers.AutoencoderKL`` (``kind: kl``)."""
    if cfg.kind == "patch":
        from talk.models.patch_vae import PatchAutoencoder

        return PatchAutoencoder(
            patch_size=cfg.patch_size, latent_channels=cfg.latent_channels, width=cfg.width,
            encoder_blocks=cfg.encoder_blocks, decoder_blocks=cfg.decoder_blocks, refine_width=cfg.refine_width,
            norm_num_groups=cfg.norm_num_groups, sample_size=image_size, scaling_factor=1.0,
        )
    from diffusers import AutoencoderKL

    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=image_size,
        scaling_factor=1.0,  # measured from the data by fit_vae and written into the config
        mid_block_add_attention=cfg.mid_attention,
        force_upcast=False,
    )


# --------------------------------------------------------------------------------------------
# Losses (images in [-1, 1], (B, 3, H, W))


def gradient_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L1 between horizontal and vertical finite differences: a cheap edge (sharpness) term."""
    dx = (x[..., :, 1:] - x[..., :, :-1]) - (y[..., :, 1:] - y[..., :, :-1])  # (B, C, H, W-1)
    dy = (x[..., 1:, :] - x[..., :-1, :]) - (y[..., 1:, :] - y[..., :-1, :])  # (B, C, H-1, W)
    return dx.abs().mean() + dy.abs().mean()


def spectrum_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L1 between log-amplitude spectra (2-D FFT per channel): penalises the loss of fine detail
    that pixel losses average away (a frequency loss in the spirit of Jiang et al. 2021's focal
    frequency loss, without its adaptive weights)."""
    fx = torch.fft.rfft2(x.float(), norm="ortho").abs()
    fy = torch.fft.rfft2(y.float(), norm="ortho").abs()
    return (torch.log1p(fx) - torch.log1p(fy)).abs().mean()


def kl_loss(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) per latent element, averaged (Kingma & Welling 2014, App. B)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


@dataclasses.dataclass(frozen=True)
class LossWeights:
    l1: float = 1.0  # weight of |x - x^|
    l2: float = 0.0  # weight of (x - x^)^2
    gradient: float = 0.5  # weight of the finite-difference L1 (gradient_loss)
    spectrum: float = 0.0  # weight of the log-amplitude spectrum L1 (spectrum_loss)
    kl: float = 1e-6  # weight of the per-element KL to N(0, I)


def vae_loss(
    vae, x: torch.Tensor, w: LossWeights, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """Reconstruction (L1 / L2 / gradient) of a posterior sample plus a small KL (LDM §3)."""
    posterior = vae.encode(x).latent_dist  # mean, logvar: (B, C, h, w)
    z = posterior.sample(generator=generator)
    x_hat = vae.decode(z).sample  # (B, 3, H, W)
    parts = {
        "l1": F.l1_loss(x_hat, x),
        "l2": F.mse_loss(x_hat, x),
        "gradient": gradient_loss(x_hat, x),
        "spectrum": spectrum_loss(x_hat, x) if w.spectrum else x.new_zeros(()),
        "kl": kl_loss(posterior.mean, posterior.logvar),
    }
    loss = (w.l1 * parts["l1"] + w.l2 * parts["l2"] + w.gradient * parts["gradient"]
            + w.spectrum * parts["spectrum"] + w.kl * parts["kl"])
    return loss, {k: float(v.detach()) for k, v in parts.items()}
