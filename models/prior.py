"""The probabilistic cross-modal emotion / style embedder and its contrastive objective.

DICE-Talk §3.1 ("disentangled emotion embedder"): cross-modal attention over a clip's audio
features and facial-expression features gives an identity-agnostic Gaussian per clip, trained so
that the same emotion from different speakers matches and different emotions do not. SVP §3.2
learns a speaker's intrinsic style as a Gaussian with a contrastive objective of the same kind;
here it is the same module trained with same-clip / same-speaker positives.

The objective is PCME's (Chun et al. 2021, §3): embeddings are sampled with the
reparameterisation trick, the match probability of two clips is
``p = mean_{k,l} sigmoid(-a * ||z_k - z'_l|| + b)`` over sample pairs, trained with a binary
cross-entropy against (soft) pair targets, plus a KL regulariser towards N(0, I) (PCME's VIB term).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from talk.models.prior_config import HEADS, VISUAL_DIM, EmotionBankConfig, PriorConfig

__all__ = [
    "HEADS",
    "VISUAL_DIM",
    "EmotionBankConfig",
    "EmotionEmbedder",
    "PriorConfig",
    "PriorModel",
    "ProbabilisticContrastiveLoss",
    "emotion_pairs",
    "kl_standard_normal",
    "sample_gaussian",
    "style_pairs",
]


def _pool_time(x: torch.Tensor, mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked mean over groups of ``k`` consecutive steps: (B, T, C), (B, T) -> (B, ceil(T/k), C), mask."""
    if k == 1:
        return x, mask
    B, T, C = x.shape
    pad = (-T) % k
    if pad:
        x = F.pad(x, (0, 0, 0, pad))
        mask = F.pad(mask, (0, pad), value=False)
    w = mask.to(x.dtype).view(B, -1, k, 1)  # (B, T', k, 1)
    s = (x.view(B, -1, k, C) * w).sum(2)  # (B, T', C)
    n = w.sum(2)  # (B, T', 1)
    return s / n.clamp_min(1.0), n.squeeze(-1) > 0


def _time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of token times in seconds: (B, T) -> (B, T, dim).

    Both modalities use the same clock, so an audio token and the visual token at the same
    instant get the same position (the cross-modal alignment of DICE-Talk §3.1).
    """
    half = dim // 2
    # periods from 0.08 s (one video frame pair) to ~60 s
    freqs = torch.exp(torch.linspace(math.log(2 * math.pi / 0.08), math.log(2 * math.pi / 60.0), half, device=t.device))
    ang = t.unsqueeze(-1) * freqs  # (B, T, half)
    emb = torch.cat([ang.sin(), ang.cos()], dim=-1)
    return F.pad(emb, (0, dim - 2 * half))


class EmotionEmbedder(nn.Module):
    """Audio and/or visual expression tokens -> Gaussian (mu, logvar) of ``emb_dim`` (DICE-Talk §3.1).

    ``audio``: (B, Ta, L, D) Whisper hidden states at 50 Hz (every layer); ``visual``: (B, Tv, 136)
    per-speaker normalised landmark offsets at 25 fps. Either may be None (audio-only / video-only
    embedding); masks are (B, Ta) / (B, Tv) booleans, True where a frame is valid. A sample whose
    mask is all False for one modality is embedded from the other (modality dropout).
    """

    AUDIO_RATE = 50.0  # Hz, Whisper encoder frames
    VIDEO_RATE = 25.0  # Hz, video frames

    def __init__(self, cfg: PriorConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        # all Whisper layers: pooled in time, normalised per layer (their scales differ by orders
        # of magnitude), then one projection of the stacked layers
        self.audio_norm = nn.LayerNorm(cfg.audio_dim, elementwise_affine=False)
        self.audio_proj = nn.Sequential(nn.Linear(cfg.audio_layers * cfg.audio_dim, w), nn.GELU(), nn.Linear(w, w))
        # landmarks: a temporal convolution (sees the velocity of the expression), then a projection
        # per-channel scale of the landmark offsets (set from the training data, saved with the weights)
        self.register_buffer("visual_scale", torch.ones(VISUAL_DIM))
        self.visual_conv = nn.Conv1d(VISUAL_DIM, w, kernel_size=3, padding=1)
        self.visual_proj = nn.Sequential(nn.GELU(), nn.Linear(w, w))
        self.modality = nn.Parameter(torch.randn(3, w) * 0.02)  # [cls, audio, visual] embeddings
        self.cls = nn.Parameter(torch.randn(1, 1, w) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model=w,
            nhead=cfg.attn_heads,
            dim_feedforward=w * cfg.ff_mult,
            dropout=cfg.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(w)
        self.mu_head = nn.Linear(w, cfg.emb_dim)
        self.logvar_head = nn.Sequential(nn.Linear(2 * w, w), nn.GELU(), nn.Linear(w, cfg.emb_dim))
        nn.init.zeros_(self.logvar_head[-1].weight)
        nn.init.constant_(self.logvar_head[-1].bias, -2.0)  # start with sigma ~ 0.37

    def _audio_tokens(self, audio: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, Ta, L, D = audio.shape
        if (L, D) != (self.cfg.audio_layers, self.cfg.audio_dim):
            raise ValueError(f"audio features are (L={L}, D={D}), the embedder expects "
                             f"({self.cfg.audio_layers}, {self.cfg.audio_dim})")
        a, mask = _pool_time(audio.float().reshape(B, Ta, L * D), mask, self.cfg.audio_pool)  # (B, Ta', L*D)
        a = self.audio_norm(a.view(B, -1, L, D)).flatten(2)  # (B, Ta', L*D)
        tok = self.audio_proj(a) + self.modality[1]  # (B, Ta', W)
        t = (torch.arange(tok.shape[1], device=tok.device) + 0.5) * self.cfg.audio_pool / self.AUDIO_RATE
        return tok, mask, t.expand(B, -1)

    def _visual_tokens(self, visual: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, Tv, C = visual.shape
        if C != VISUAL_DIM:
            raise ValueError(f"visual features have {C} channels, expected {VISUAL_DIM} (68 landmarks x 2)")
        v = visual.float() / self.visual_scale * mask.unsqueeze(-1)  # invalid frames contribute zeros
        v = self.visual_conv(v.transpose(1, 2)).transpose(1, 2)  # (B, Tv, W)
        v, mask = _pool_time(v, mask, self.cfg.visual_pool)  # (B, Tv', W)
        tok = self.visual_proj(v) + self.modality[2]
        t = (torch.arange(tok.shape[1], device=tok.device) + 0.5) * self.cfg.visual_pool / self.VIDEO_RATE
        return tok, mask, t.expand(B, -1)

    def forward(
        self,
        audio: torch.Tensor | None = None,
        visual: torch.Tensor | None = None,
        audio_mask: torch.Tensor | None = None,
        visual_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(mu, logvar)``, each (B, emb_dim)."""
        if audio is None and visual is None:
            raise ValueError("EmotionEmbedder needs audio, visual, or both")
        tokens, masks, times = [], [], []
        if audio is not None:
            m = audio_mask if audio_mask is not None else torch.ones(audio.shape[:2], dtype=torch.bool, device=audio.device)
            tok, m, t = self._audio_tokens(audio, m.bool())
            tokens.append(tok), masks.append(m), times.append(t)
        if visual is not None:
            m = visual_mask if visual_mask is not None else torch.ones(visual.shape[:2], dtype=torch.bool, device=visual.device)
            tok, m, t = self._visual_tokens(visual, m.bool())
            tokens.append(tok), masks.append(m), times.append(t)
        x = torch.cat(tokens, 1)  # (B, T, W)
        valid = torch.cat(masks, 1)  # (B, T)
        x = x + _time_embedding(torch.cat(times, 1), x.shape[-1])
        B = x.shape[0]
        cls = (self.cls + self.modality[0]).expand(B, 1, -1)
        x = torch.cat([cls, x], 1)  # (B, 1 + T, W)
        valid = torch.cat([torch.ones(B, 1, dtype=torch.bool, device=x.device), valid], 1)
        h = self.norm(self.encoder(x, src_key_padding_mask=~valid))  # (B, 1 + T, W)
        c = h[:, 0]  # (B, W)
        w = valid[:, 1:].unsqueeze(-1).to(h.dtype)
        pooled = (h[:, 1:] * w).sum(1) / w.sum(1).clamp_min(1.0)  # (B, W); zeros when no token is valid
        mu = self.mu_head(c)  # (B, E)
        logvar = self.logvar_head(torch.cat([c, pooled], -1)).clamp(self.cfg.logvar_min, self.cfg.logvar_max)
        return mu, logvar


# --------------------------------------------------------------------------------------------
# The probabilistic contrastive objective (PCME §3; DICE-Talk §3.1; SVP §3.2)


def sample_gaussian(mu: torch.Tensor, logvar: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Reparameterised samples ``mu + sigma * eps``: (B, E) -> (n, B, E)."""
    eps = torch.randn((n, *mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + (0.5 * logvar).exp() * eps


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) per dimension, averaged over batch and dimensions (PCME's VIB)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).mean()


class ProbabilisticContrastiveLoss(nn.Module):
    """Soft-match binary cross-entropy between all pairs of a batch (PCME §3.2).

    ``p_ij = mean_{k,l} sigmoid(-a * d(z_i^k, z_j^l) / sqrt(E) + b)`` with learnable ``a > 0``
    and ``b``; the loss is the BCE of ``p_ij`` against a target in [0, 1], averaged separately
    over positive (target > 0) and negative pairs so that rare positives count as much as the
    many negatives. ``weight`` 0 excludes a pair (e.g. unlabelled clips, pairs of one clip).
    """

    def __init__(self, init_a: float = 5.0, init_b: float = 5.0):
        super().__init__()
        self.log_a = nn.Parameter(torch.tensor(math.log(init_a)))
        self.b = nn.Parameter(torch.tensor(float(init_b)))

    def match_probability(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """(K, B1, E), (K, B2, E) samples -> (B1, B2) match probability averaged over K x K pairs."""
        K, B1, E = z1.shape
        d = torch.cdist(z1.reshape(K * B1, E), z2.reshape(-1, E))  # (K*B1, K*B2)
        p = torch.sigmoid(-self.log_a.exp() * d / math.sqrt(E) + self.b)
        return p.view(K, B1, K, -1).mean((0, 2))

    def forward(
        self,
        mu: torch.Tensor,
        logvar: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor,
        n_samples: int = 4,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        z = sample_gaussian(mu, logvar, n_samples, generator)  # (K, B, E)
        p = self.match_probability(z, z).clamp(1e-6, 1 - 1e-6)  # (B, B)
        bce = -(target * p.log() + (1 - target) * (1 - p).log())
        pos = weight * (target > 0)
        neg = weight * (target <= 0)
        loss = mu.new_zeros(())
        if pos.sum() > 0:
            loss = loss + (bce * pos).sum() / pos.sum()
        if neg.sum() > 0:
            loss = loss + (bce * neg).sum() / neg.sum()
        return loss


def emotion_pairs(
    emotion: torch.Tensor,
    level: torch.Tensor,
    speaker: torch.Tensor,
    clip: torch.Tensor,
    level_target: float = 1.0,
    cross_speaker_only: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair targets of the identity-agnostic emotion head (DICE-Talk §3.1): (B,) ids -> (B, B) x 2.

    Positive: same emotion from *different* speakers (target 1 at the same level,
    ``level_target`` at another level). Negative: different emotions, whoever speaks — including
    the same speaker, which pushes one person's clips apart by emotion rather than together by
    identity. Ignored: unlabelled clips (emotion < 0), pairs from one clip, and (with
    ``cross_speaker_only``) same-emotion pairs of one speaker.
    """
    same_emo = emotion[:, None] == emotion[None, :]
    same_lvl = level[:, None] == level[None, :]
    same_spk = speaker[:, None] == speaker[None, :]
    same_clip = clip[:, None] == clip[None, :]
    labelled = (emotion[:, None] >= 0) & (emotion[None, :] >= 0)
    target = same_emo.float() * torch.where(same_lvl, 1.0, level_target)
    weight = labelled & ~same_clip
    if cross_speaker_only:
        weight = weight & ~(same_emo & same_spk)
    return target, weight.float()


def style_pairs(speaker: torch.Tensor, clip: torch.Tensor, positive: str = "clip") -> tuple[torch.Tensor, torch.Tensor]:
    """Pair targets of the style head (SVP §3.2): (B,) ids -> (B, B) target, weight.

    ``positive="clip"``: two windows of one clip match, everything else does not (other clips of
    the same speaker are ignored). ``positive="speaker"``: all windows of one speaker match.
    The diagonal (a window with itself) is always ignored.
    """
    eye = torch.eye(len(clip), dtype=torch.bool, device=clip.device)
    if positive == "clip":
        same = clip[:, None] == clip[None, :]
        same_spk = speaker[:, None] == speaker[None, :]
        weight = ~eye & (same | ~same_spk)
    elif positive == "speaker":
        same = speaker[:, None] == speaker[None, :]
        weight = ~eye
    else:
        raise ValueError(f"unknown style positive {positive!r}")
    return same.float(), weight.float()


class PriorModel(nn.Module):
    """Everything pretrain_prior trains and saves: one embedder per head, their losses' learnable
    scales (a, b of the match probability), the Emotion Bank fed by ``bank_head``, and the
    population landmark template that normalises a reference clip of an unknown speaker."""

    def __init__(self, prior: PriorConfig, bank: EmotionBankConfig):
        super().__init__()
        from talk.models.emotion_bank import EmotionBank

        if bank.emb_dim != prior.emb_dim:
            raise ValueError(f"bank.emb_dim={bank.emb_dim} differs from prior.emb_dim={prior.emb_dim}")
        self.prior_cfg, self.bank_cfg = prior, bank
        self.embedders = nn.ModuleDict({h: EmotionEmbedder(prior) for h in prior.heads})
        self.losses = nn.ModuleDict({h: ProbabilisticContrastiveLoss() for h in prior.heads})
        self.bank = EmotionBank(bank)
        self.register_buffer("landmark_template", torch.zeros(VISUAL_DIM // 2, 2))  # (68, 2) IOD units

    @property
    def heads(self) -> tuple[str, ...]:
        return tuple(self.embedders.keys())

    @property
    def bank_head(self) -> str:
        """The head whose embedding the Emotion Bank reads: emotion (DICE-Talk), else the first."""
        return "emotion" if "emotion" in self.embedders else self.heads[0]

    def forward(self, audio=None, visual=None, audio_mask=None, visual_mask=None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Every head's (mu, logvar), each (B, emb_dim)."""
        return {h: e(audio, visual, audio_mask, visual_mask) for h, e in self.embedders.items()}
