"""Architecture configs of the emotion / style prior and the Emotion Bank (torch-free).

They are fields of ``model`` in params.yaml (``model.prior``, ``model.bank``), so
talk/core/params.py imports this module on every `talk` command: it must not import torch. The
modules themselves live in models/prior.py and models/emotion_bank.py, which re-export these.
"""

from __future__ import annotations

import dataclasses

from talk.models.errors import ConfigError

HEADS = ("emotion", "style")  # emotion: DICE-Talk §3.1 (identity-agnostic); style: SVP §3.2 (speaker style)
LANDMARKS = 68  # dlib 68-point layout of the visual input
VISUAL_DIM = 2 * LANDMARKS  # (x, y) per landmark, flattened




@dataclasses.dataclass(frozen=True)
class PriorConfig:
    """One probabilistic cross-modal embedder (DICE-Talk §3.1; SVP's style extractor, §3.2).

    Audio tokens (all Whisper layers, pooled in time) and visual expression tokens (per-speaker
    normalised landmarks, pooled in time) attend to each other in a small transformer with
    modality embeddings; a [CLS] token gives a Gaussian N(mu, diag(exp(logvar))) of ``emb_dim``.
    ``heads`` lists the embedders the checkpoint holds; each is one instance of this config.
    """

    heads: tuple[str, ...] = ("emotion", "style")  # embedders trained: emotion (DICE-Talk) and/or style (SVP)
    emb_dim: int = dataclasses.field(default=256, metadata={"range": (2, None)})  # size of the Gaussian (mean and log-variance each)
    width: int = dataclasses.field(default=128, metadata={"range": (8, None)})  # transformer width (channels per token)
    layers: int = dataclasses.field(default=2, metadata={"range": (1, None)})  # transformer layers over both token sets
    attn_heads: int = dataclasses.field(default=4, metadata={"range": (1, None)})  # attention heads; divides width
    ff_mult: int = dataclasses.field(default=2, metadata={"range": (1, None)})  # feed-forward width / width
    dropout: float = dataclasses.field(default=0.1, metadata={"range": (0.0, 0.9)})  # dropout inside the transformer (training only)
    audio_layers: int = dataclasses.field(default=5, metadata={"range": (1, None)})  # L: Whisper hidden states per frame (tiny: embedding + 4 layers)
    audio_dim: int = dataclasses.field(default=384, metadata={"range": (1, None)})  # D: Whisper width (tiny: 384)
    audio_pool: int = dataclasses.field(default=4, metadata={"range": (1, None)})  # Whisper frames (50 Hz) averaged per audio token (4 -> 12.5 Hz)
    visual_pool: int = dataclasses.field(default=2, metadata={"range": (1, None)})  # video frames (25 fps) averaged per visual token (2 -> 12.5 Hz)
    logvar_min: float = -8.0  # clamp of the predicted log-variance, lower end
    logvar_max: float = 4.0  # clamp of the predicted log-variance, upper end

    def validate(self) -> None:
        bad = [h for h in self.heads if h not in HEADS]
        if bad or not self.heads or len(set(self.heads)) != len(self.heads):
            raise ConfigError(f"model.prior.heads: {list(self.heads)} must be distinct names from {', '.join(HEADS)}")
        if self.width % self.attn_heads:
            raise ConfigError(f"model.prior.attn_heads={self.attn_heads} does not divide model.prior.width={self.width}")
        if self.logvar_min >= self.logvar_max:
            raise ConfigError("model.prior.logvar_min must be below model.prior.logvar_max")


@dataclasses.dataclass(frozen=True)
class EmotionBankConfig:
    """The Emotion Bank (DICE-Talk §3.2): a shared, vector-quantised codebook of emotion vectors.

    The embedding z becomes ``n_queries`` query tokens; each is quantised to its nearest code
    (commitment ``beta``, straight-through gradient) and also attends over the whole bank
    (``attn_heads``-head attention); the result is ``n_tokens`` tokens of ``token_dim`` for the
    denoiser's emotion cross-attention. DICE-Talk's release: 256-d -> 32 queries, 64 codes x 1024,
    8 heads, beta 0.25.
    """

    emb_dim: int = dataclasses.field(default=256, metadata={"range": (2, None)})  # input size: model.prior.emb_dim
    n_codes: int = dataclasses.field(default=32, metadata={"range": (2, None)})  # codebook entries shared by all emotions
    code_dim: int = dataclasses.field(default=128, metadata={"range": (4, None)})  # width of a code (and of the query tokens)
    attn_heads: int = dataclasses.field(default=4, metadata={"range": (1, None)})  # heads of the query-over-bank attention; divides code_dim
    n_queries: int = dataclasses.field(default=8, metadata={"range": (1, None)})  # Q: query tokens made from z
    n_tokens: int = dataclasses.field(default=8, metadata={"range": (1, None)})  # N: emotion tokens handed to the denoiser
    token_dim: int = dataclasses.field(default=128, metadata={"range": (1, None)})  # width of an emotion token (the denoiser's context width)
    beta: float = dataclasses.field(default=0.25, metadata={"range": (0.0, None)})  # commitment weight of the VQ loss
    usage_decay: float = dataclasses.field(default=0.95, metadata={"range": (0.0, 1.0)})  # EMA decay of per-code usage per step (dead-code detection)
    dead_threshold: float = dataclasses.field(default=0.1, metadata={"range": (0.0, 1.0)})  # a code is dead below this fraction of uniform usage

    def validate(self) -> None:
        if self.code_dim % self.attn_heads:
            raise ConfigError(f"model.bank.attn_heads={self.attn_heads} does not divide model.bank.code_dim={self.code_dim}")
