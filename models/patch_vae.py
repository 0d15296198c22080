"""A block-PCA autoencoder: the embedded profile's image VAE (``model.vae.kind: patch``).

The latent of an S px crop is (C, S/p, S/p): each p x p x 3 pixel block (pixel-unshuffle) maps to C
channels. The map is a *linear* path -- the top-C principal components of the training blocks,
whitened, fitted from data before training (``fit_pca``) -- plus small residual networks whose
last layers start at zero, so training starts from the PCA codec (colour and low frequencies
kept exactly) and only learns what the linear path cannot: context across blocks in the encoder
and decoder, and a full-resolution refinement that restores edges. A KL posterior as LDM §3
(mean from the encoder, a learned per-channel log-variance plus an encoder correction), so the
rest of the pipeline treats it exactly like a diffusers ``AutoencoderKL``: ``encode(x).latent_dist``,
``decode(z).sample``, ``config.scaling_factor``, ``save_pretrained`` / ``from_config``.

Why not a small AutoencoderKL: on 2 CPU cores it cannot be trained in minutes to keep colour and
identity (docs/findings.md, "VAE"): a 16x16x4 KL-VAE gave ~23 dB and sepia colours on unseen
faces; the PCA start gives ~30 dB at step 0 and the colour of any image, seen or not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

__all__ = ["PatchAutoencoder", "block_statistics"]


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, residual; the second conv starts at zero (an identity block)."""

    def __init__(self, width: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, width), nn.Conv2d(width, width, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(groups, width), nn.Conv2d(width, width, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


def _zero(conv: nn.Conv2d) -> nn.Conv2d:
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def block_statistics(x: torch.Tensor, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (d,) and covariance (d, d) of the p x p x 3 blocks of images x (N, 3, H, W) in [-1, 1]."""
    u = F.pixel_unshuffle(x.double(), patch)  # (N, d, h, w), d = 3 p^2
    u = u.permute(0, 2, 3, 1).reshape(-1, u.shape[1])  # (N h w, d)
    mean = u.mean(0)
    c = u - mean
    return mean, c.T @ c / max(1, len(c) - 1)


class PatchAutoencoder(ModelMixin, ConfigMixin):
    """Image (B, 3, S, S) in [-1, 1] <-> latent (B, C, S/p, S/p); see the module docstring."""

    @register_to_config
    def __init__(
        self,
        patch_size: int = 8,
        latent_channels: int = 16,
        width: int = 128,
        encoder_blocks: int = 1,
        decoder_blocks: int = 2,
        refine_width: int = 32,
        refine_features: int = 4,
        norm_num_groups: int = 8,
        logvar_init: float = -9.0,
        sample_size: int = 128,
        scaling_factor: float = 1.0,
    ):
        super().__init__()
        p, c = patch_size, latent_channels
        d = 3 * p * p
        self.encode_linear = nn.Conv2d(d, c, 1)  # the PCA path (fit_pca)
        self.decode_linear = nn.Conv2d(c, d, 1)
        self.encoder = nn.Sequential(
            nn.Conv2d(d, width, 3, padding=1), *[ResBlock(width, norm_num_groups) for _ in range(encoder_blocks)],
            nn.GroupNorm(norm_num_groups, width), nn.SiLU(), _zero(nn.Conv2d(width, 2 * c, 3, padding=1)),
        )
        self.logvar = nn.Parameter(torch.full((c,), float(logvar_init)))
        self.decoder = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1), *[ResBlock(width, norm_num_groups) for _ in range(decoder_blocks)],
            nn.GroupNorm(norm_num_groups, width), nn.SiLU(),
            _zero(nn.Conv2d(width, d + p * p * refine_features, 3, padding=1)),
        )
        self.refine = nn.Sequential(
            nn.Conv2d(3 + refine_features, refine_width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(refine_width, refine_width, 3, padding=1), nn.SiLU(),
            _zero(nn.Conv2d(refine_width, 3, 3, padding=1)),
        )

    @torch.no_grad()
    def fit_pca(self, mean: torch.Tensor, cov: torch.Tensor) -> None:
        """Set the linear path to the whitened top-C principal components of the block statistics."""
        c = self.config.latent_channels
        evals, evecs = torch.linalg.eigh(cov.double())  # ascending
        evals, evecs = evals.flip(0)[:c].clamp_min(1e-8), evecs.flip(1)[:, :c]  # (C,), (d, C)
        scale = evals.sqrt()  # whitening: every latent channel starts at unit variance
        w_in = (evecs / scale).T  # (C, d)
        self.encode_linear.weight.copy_(w_in[:, :, None, None].to(self.encode_linear.weight))
        self.encode_linear.bias.copy_((-w_in @ mean.double()).to(self.encode_linear.bias))
        w_out = evecs * scale  # (d, C)
        self.decode_linear.weight.copy_(w_out[:, :, None, None].to(self.decode_linear.weight))
        self.decode_linear.bias.copy_(mean.to(self.decode_linear.bias))

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        u = F.pixel_unshuffle(x, self.config.patch_size)  # (B, d, h, w)
        d_mean, d_logvar = self.encoder(u).chunk(2, dim=1)
        mean = self.encode_linear(u) + d_mean
        logvar = self.logvar[None, :, None, None] + d_logvar
        posterior = DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1))
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None):
        p, k = self.config.patch_size, self.config.refine_features
        d = 3 * p * p
        h = self.decoder(z)  # (B, d + p^2 k, h, w)
        x0 = F.pixel_shuffle(self.decode_linear(z) + h[:, :d], p)  # (B, 3, S, S)
        feats = F.pixel_shuffle(h[:, d:], p)  # (B, k, S, S)
        x = x0 + self.refine(torch.cat([x0, feats], dim=1))
        return DecoderOutput(sample=x) if return_dict else (x,)

    def forward(self, sample: torch.Tensor, sample_posterior: bool = False, return_dict: bool = True,
                generator: torch.Generator | None = None):
        post = self.encode(sample).latent_dist
        z = post.sample(generator=generator) if sample_posterior else post.mode()
        return self.decode(z, return_dict=return_dict)
