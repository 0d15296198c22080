"""Emotion discrimination on the denoiser's features (DICE-Talk §3.3).

A small classifier reads the UNet's mid-block output for a noisy latent (which already carries
the timestep through the UNet's time embedding; stages/finetune_disc.py drops every condition for
this forward), pooled over frames and space, plus its own embedding of the timestep, and predicts DICE-Talk's 22 joint emotion×level classes (or the 8
emotions). Trained first on the frozen denoiser; its cross-entropy then joins the denoising loss
(weight λ) when the denoiser is fine-tuned.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn

from talk.models.denoiser_config import DiscriminatorConfig
from talk.models.emotions import EMOTIONS, LEVELS, N_JOINT_CLASSES


def n_classes(cfg: DiscriminatorConfig) -> int:
    return N_JOINT_CLASSES if cfg.classes == "joint" else len(EMOTIONS)


def class_targets(emotion: torch.Tensor, level: torch.Tensor, classes: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels (B,) and a validity mask (B,) from emotion ids (-1 none) and levels (0 none).

    ``joint``: models.emotions.joint_class vectorised (0 = neutral, then 7 emotions × 3 levels);
    a non-neutral clip without a level is not a valid joint target.
    """
    if classes == "emotion":
        valid = emotion >= 0
        return emotion.clamp(min=0), valid
    if classes != "joint":
        raise ValueError(f"unknown class set {classes!r}; choose joint or emotion")
    valid = (emotion == 0) | ((emotion > 0) & (level >= 1) & (level <= len(LEVELS)))
    joint = torch.where(emotion == 0, torch.zeros_like(emotion), 1 + (emotion - 1) * len(LEVELS) + (level - 1))
    return joint.clamp(0, N_JOINT_CLASSES - 1), valid


class EmotionDiscriminator(nn.Module):
    """Mid-block features (B, F, C, h, w) + timestep (B,) -> emotion logits (B, n_classes)."""

    def __init__(self, cfg: DiscriminatorConfig, in_channels: int):
        super().__init__()
        self.cfg = cfg
        self.in_channels = in_channels
        self.time_proj = Timesteps(cfg.time_embed_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(cfg.time_embed_dim, cfg.hidden)
        self.norm = nn.LayerNorm(2 * in_channels)
        self.proj = nn.Linear(2 * in_channels, cfg.hidden)
        self.head = nn.Sequential(nn.SiLU(), nn.Linear(cfg.hidden, cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, n_classes(cfg)))

    def forward(self, features: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        x = features.float().transpose(1, 2).flatten(2)  # (B, C, F·h·w)
        pooled = torch.cat([x.mean(-1), x.amax(-1)], dim=1)  # (B, 2C)
        h = self.proj(self.norm(pooled)) + self.time_embed(self.time_proj(timestep.float().reshape(-1)))
        return self.head(h)  # (B, n_classes)

    def loss(self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the valid samples (0 when none is valid)."""
        if not bool(valid.any()):
            return logits.sum() * 0.0
        return F.cross_entropy(logits[valid], target[valid])
