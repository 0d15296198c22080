"""The Emotion Bank: a shared, vector-quantised codebook that turns an emotion embedding into tokens.

DICE-Talk §3.2 ("correlation-enhanced emotion conditioning"): a learnable bank of emotion vectors
shared by every emotion is trained by vector quantisation (nearest-code assignment, commitment
loss, straight-through gradient; van den Oord et al. 2017, eq. 3). The emotion embedding becomes
query tokens that attend over the bank; the attended result, a fixed number of emotion tokens,
conditions the denoiser through its own cross-attention. Related emotions share codes: the
"cooperation" of the paper's title.

Here each query token is (a) quantised to its nearest code (straight-through) and (b) attends
softly over the whole bank; the token handed on is ``out(norm(quantised + attended))``, so the
tokens are anchored on discrete codes yet vary smoothly with z (interpolation, intensity).
Usage statistics (EMA of assignments), perplexity and dead-code restarts keep the bank in use.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from talk.models.prior_config import EmotionBankConfig

__all__ = ["BankOutput", "EmotionBank", "EmotionBankConfig", "VQResult", "vector_quantize"]


@dataclasses.dataclass
class VQResult:
    quantized: torch.Tensor  # (..., C) straight-through: forward value = codes, gradient = identity to the input
    codes: torch.Tensor  # (..., C) the assigned codes (gradient to the codebook)
    indices: torch.Tensor  # (...,) long, assigned code per vector
    loss: torch.Tensor  # scalar: ||sg(x) - e||^2 + beta * ||x - sg(e)||^2 (mean over elements)


def vector_quantize(x: torch.Tensor, codebook: torch.Tensor, beta: float) -> VQResult:
    """Nearest-code assignment with codebook + commitment loss and a straight-through estimator.

    ``x``: (..., C); ``codebook``: (K, C). The codebook term moves each assigned code toward its
    inputs, the commitment term (weight ``beta``) keeps the inputs near their codes, and the
    straight-through ``x + sg(e - x)`` passes the decoder's gradient to ``x`` unchanged.
    """
    flat = x.reshape(-1, x.shape[-1])  # (M, C)
    d = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codebook.t() + codebook.pow(2).sum(1)[None])  # (M, K)
    idx = d.argmin(1)  # (M,)
    e = codebook[idx].view_as(x)  # (..., C)
    loss = F.mse_loss(e, x.detach()) + beta * F.mse_loss(x, e.detach())
    quantized = x + (e - x).detach()
    return VQResult(quantized=quantized, codes=e, indices=idx.view(x.shape[:-1]), loss=loss)


@dataclasses.dataclass
class BankOutput:
    tokens: torch.Tensor  # (B, N, token_dim) emotion tokens for the denoiser
    vq_loss: torch.Tensor  # scalar, VQ codebook + commitment loss
    indices: torch.Tensor  # (B, Q) code assigned to each query token
    perplexity: torch.Tensor  # scalar, exp(entropy) of the batch's code assignments (1 .. n_codes)
    queries: torch.Tensor  # (B, Q, code_dim) continuous query tokens (before quantisation)


class EmotionBank(nn.Module):
    """z (B, emb_dim) -> ``BankOutput`` with (B, n_tokens, token_dim) emotion tokens (DICE-Talk §3.2)."""

    def __init__(self, cfg: EmotionBankConfig):
        super().__init__()
        self.cfg = cfg
        C, Q = cfg.code_dim, cfg.n_queries
        self.to_queries = nn.Linear(cfg.emb_dim, Q * C)
        self.query_pos = nn.Parameter(torch.randn(Q, C) * 0.02)
        self.query_norm = nn.LayerNorm(C)
        self.codebook = nn.Parameter(torch.randn(cfg.n_codes, C))  # unit-variance entries, like the normed queries
        self.attn = nn.MultiheadAttention(C, cfg.attn_heads, batch_first=True)
        self.out_norm = nn.LayerNorm(C)
        self.token_mix = nn.Linear(Q, cfg.n_tokens) if cfg.n_tokens != Q else None
        self.out = nn.Linear(C, cfg.token_dim)
        # pretraining readout: the tokens must still carry z before a denoiser consumes them
        self.readout = nn.Linear(cfg.token_dim, cfg.emb_dim)
        self.register_buffer("usage", torch.full((cfg.n_codes,), 1.0 / cfg.n_codes))  # EMA assignment frequency

    def queries(self, z: torch.Tensor) -> torch.Tensor:
        """(B, emb_dim) -> (B, Q, code_dim) continuous query tokens."""
        q = self.to_queries(z).view(z.shape[0], self.cfg.n_queries, self.cfg.code_dim)
        return self.query_norm(q + self.query_pos)

    def forward(self, z: torch.Tensor) -> BankOutput:
        q = self.queries(z)  # (B, Q, C)
        vq = vector_quantize(q, self.codebook, self.cfg.beta)
        bank = self.codebook.unsqueeze(0).expand(z.shape[0], -1, -1)  # (B, K, C)
        attended, _ = self.attn(q, bank, bank, need_weights=False)  # (B, Q, C)
        h = self.out_norm(vq.quantized + attended)  # (B, Q, C)
        if self.token_mix is not None:
            h = self.token_mix(h.transpose(1, 2)).transpose(1, 2)  # (B, N, C)
        tokens = self.out(h)  # (B, N, token_dim)
        counts = torch.bincount(vq.indices.reshape(-1), minlength=self.cfg.n_codes).to(z.dtype)
        probs = counts / counts.sum()
        perplexity = torch.exp(-(probs * probs.clamp_min(1e-12).log()).sum())
        if self.training:
            with torch.no_grad():
                self.usage.mul_(self.cfg.usage_decay).add_(probs, alpha=1 - self.cfg.usage_decay)
        return BankOutput(tokens=tokens, vq_loss=vq.loss, indices=vq.indices, perplexity=perplexity, queries=q)

    def reconstruct(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pretraining readout: (B, N, token_dim) -> (B, emb_dim), the mean token mapped back to z."""
        return self.readout(tokens.mean(1))

    def dead_codes(self) -> torch.Tensor:
        """Indices of codes used less than ``dead_threshold`` of the uniform rate (EMA usage)."""
        return torch.nonzero(self.usage < self.cfg.dead_threshold / self.cfg.n_codes).flatten()

    @torch.no_grad()
    def restart_dead_codes(self, candidates: torch.Tensor, generator: torch.Generator | None = None) -> int:
        """Re-seed dead codes on randomly drawn recent query vectors ``candidates`` (M, code_dim).

        Their usage is reset to the uniform rate so they get a fair chance before the next check.
        Returns the number of codes restarted.
        """
        dead = self.dead_codes()
        if len(dead) == 0 or len(candidates) == 0:
            return 0
        pick = torch.randint(len(candidates), (len(dead),), generator=generator, device=candidates.device)
        self.codebook.data[dead] = candidates[pick].to(self.codebook.dtype)
        self.usage[dead] = 1.0 / self.cfg.n_codes
        return len(dead)
