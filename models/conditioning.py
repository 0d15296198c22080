"""Condition encoders and decoupled cross-attention (DICE-Talk §3.2, SVP §3.3).

Three token sets condition the UNet, each through its own key/value projections:

* audio tokens: each video frame's Whisper window (k frames at 50 Hz, every encoder layer) is
  projected to ``audio_tokens`` tokens (DICE-Talk / Sonic: 10 Whisper frames -> 32 tokens). They
  are the UNet's ordinary cross-attention context (its ``to_k``/``to_v``);
* emotion tokens: the Emotion Bank's output for the clip's emotion embedding, projected to the
  token width, attended by extra ``to_k_ip``/``to_v_ip`` projections with their own scale
  (IP-Adapter's decoupled cross-attention, diffusers ``IPAdapterAttnProcessor2_0``);
* style tokens (SVP, optional): the speaker's style embedding -> ``style_tokens`` tokens, a
  second decoupled set.

Each condition can be dropped per sample (``keep`` masks); a dropped token set is replaced by a
learned null set, so classifier-free guidance can take each condition separately.

The three sets travel to the attention processors packed along the sequence axis,
``[audio (F·Na) | emotion (Ne) | style (Ns)]``: diffusers' spatio-temporal UNet repeats the
context for every frame of a window, and ``DecoupledCrossAttnProcessor`` picks each row's own
frame's audio tokens back out before handing the sets to the IP-Adapter processor.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import AttnProcessor2_0, IPAdapterAttnProcessor2_0
from torch import nn

from talk.models.denoiser_config import ConditioningConfig


class AudioProjection(nn.Module):
    """Whisper window of one video frame -> ``n_tokens`` audio tokens (DICE-Talk §3.1, Sonic).

    Every Whisper frame of the window is projected from all its layers (L·D) to ``hidden``; the
    window (k·hidden) is then mapped to ``n_tokens`` tokens of width ``dim``. This is Sonic's
    ``AudioProjModel`` (flatten the window, MLP to tokens) with its first layer factorised per
    Whisper frame, which keeps the parameter count small for the 19 200-wide tiny window.
    """

    def __init__(self, window: int, layers: int, width: int, hidden: int, n_tokens: int, dim: int):
        super().__init__()
        self.n_tokens, self.dim = n_tokens, dim
        self.frame = nn.Sequential(nn.LayerNorm(layers * width), nn.Linear(layers * width, hidden), nn.SiLU())
        self.window = nn.Sequential(
            nn.Linear(window * hidden, n_tokens * dim), nn.SiLU(), nn.Linear(n_tokens * dim, n_tokens * dim)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """audio (B, F, k, L, D) -> tokens (B, F, n_tokens, dim)."""
        b, f, k = audio.shape[:3]
        h = self.frame(audio.flatten(3))  # (B, F, k, hidden)
        tokens = self.window(h.flatten(2))  # (B, F, n_tokens * dim)
        return self.norm(tokens.view(b, f, self.n_tokens, self.dim))


class ConditionEncoder(nn.Module):
    """Audio, emotion and style token sets with their learned null sets (condition dropout)."""

    def __init__(
        self,
        cfg: ConditioningConfig,
        dim: int,
        audio_window: int,
        audio_layers: int,
        audio_dim: int,
        emotion_tokens: int,
        emotion_token_dim: int,
        style_dim: int,
    ):
        super().__init__()
        self.cfg = cfg
        self.dim = dim
        self.audio = AudioProjection(audio_window, audio_layers, audio_dim, cfg.audio_hidden, cfg.audio_tokens, dim)
        self.emotion = nn.Sequential(nn.Linear(emotion_token_dim, dim), nn.LayerNorm(dim))
        self.null_audio = nn.Parameter(torch.randn(cfg.audio_tokens, dim) * 0.02)  # (Na, D)
        self.null_emotion = nn.Parameter(torch.randn(emotion_tokens, dim) * 0.02)  # (Ne, D)
        self.style = None
        if cfg.style_tokens:
            if style_dim <= 0:
                raise ValueError("style tokens need a style embedding width (style_dim > 0)")
            self.style = nn.Sequential(nn.Linear(style_dim, cfg.style_tokens * dim))
            self.style_norm = nn.LayerNorm(dim)
            self.null_style = nn.Parameter(torch.randn(cfg.style_tokens, dim) * 0.02)  # (Ns, D)

    @property
    def ip_tokens(self) -> tuple[int, ...]:
        """Token count of each decoupled set, in packing order (emotion, then style)."""
        n = (self.null_emotion.shape[0],)
        return n + ((self.cfg.style_tokens,) if self.style is not None else ())

    @property
    def ip_scales(self) -> list[float]:
        return [self.cfg.emotion_scale] + ([self.cfg.style_scale] if self.style is not None else [])

    @staticmethod
    def _select(keep: torch.Tensor, tokens: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
        shape = (-1,) + (1,) * (tokens.dim() - 1)
        return torch.where(keep.view(shape), tokens, null.to(tokens.dtype).expand_as(tokens))

    def encode_audio(self, audio: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """audio (B, F, k, L, D), keep (B,) bool -> (B, F, Na, D)."""
        return self._select(keep, self.audio(audio), self.null_audio)

    def encode_emotion(self, bank_tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Emotion Bank tokens (B, Ne, T) -> (B, Ne, D)."""
        return self._select(keep, self.emotion(bank_tokens), self.null_emotion)

    def encode_style(self, style: torch.Tensor | None, keep: torch.Tensor) -> torch.Tensor | None:
        """Style embedding (B, S) -> (B, Ns, D); None without style conditioning."""
        if self.style is None:
            return None
        b = keep.shape[0]
        if style is None:  # no style given: every sample takes the null set
            return self.null_style.expand(b, -1, -1)
        tokens = self.style_norm(self.style(style).view(b, self.cfg.style_tokens, self.dim))
        return self._select(keep, tokens, self.null_style)


def pack_context(audio: torch.Tensor, ip_sets: list[torch.Tensor]) -> torch.Tensor:
    """audio (B, F·Na, D) + decoupled sets [(B, N_i, D)] -> (B, F·Na + ΣN_i, D)."""
    return torch.cat([audio, *ip_sets], dim=1)


class DecoupledCrossAttnProcessor(IPAdapterAttnProcessor2_0):
    """diffusers' IP-Adapter processor fed from a packed context (module docstring).

    The packed sequence is ``[audio of F frames (F·Na) | ip set 0 | ip set 1 ...]``; a row
    ``r`` of the batch is frame ``r % F`` (diffusers folds frames into the batch frame-fastest).
    Each ip set has its own ``to_k_ip``/``to_v_ip`` and scale (``IPAdapterAttnProcessor2_0``).
    """

    def __init__(self, hidden_size: int, cross_attention_dim: int, audio_tokens: int, ip_tokens, scales):
        super().__init__(hidden_size, cross_attention_dim, num_tokens=tuple(ip_tokens), scale=list(scales))
        self.audio_tokens = audio_tokens

    def unpack(self, context: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        n_ip = sum(self.num_tokens)
        audio, ip = context[:, : context.shape[1] - n_ip], context[:, context.shape[1] - n_ip :]
        rows, frames = audio.shape[0], audio.shape[1] // self.audio_tokens
        if frames > 1:  # (rows, F·Na, D) -> each row's own frame (rows, Na, D)
            audio = audio.view(rows, frames, self.audio_tokens, -1)
            idx = torch.arange(rows, device=audio.device)
            audio = audio[idx, idx % frames]
        return audio, list(ip.split(list(self.num_tokens), dim=1))

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        audio, ip = self.unpack(encoder_hidden_states)
        return super().__call__(attn, hidden_states, (audio, ip), attention_mask, temb)


class AudioCrossAttnProcessor(AttnProcessor2_0):
    """Cross-attention to the audio tokens alone, from a packed context (``[audio | ip sets]``).

    The ``attn1`` of a block built with ``only_cross_attention`` (``model.denoiser.audio_levels``:
    audio attention at a level without self-attention) attends to its row's audio tokens; the
    block's ``attn2`` keeps the decoupled audio + emotion + style attention.
    """

    def __init__(self, audio_tokens: int, ip_tokens):
        super().__init__()
        self.audio_tokens, self.n_ip = audio_tokens, int(sum(ip_tokens))

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        audio = encoder_hidden_states[:, : encoder_hidden_states.shape[1] - self.n_ip]  # frame backbone: (rows, Na, D)
        return super().__call__(attn, hidden_states, audio, attention_mask, temb)


def install_processors(unet: nn.Module, audio_tokens: int, ip_tokens, scales) -> None:
    """Decoupled processors on every spatial cross-attention (``attn2``) of ``unet``.

    Self-attention and the temporal blocks' cross-attention (which see the whole window's packed
    context at once) keep diffusers' plain ``AttnProcessor2_0``; an ``attn1`` that is a
    cross-attention (``only_cross_attention`` blocks) attends to the audio tokens alone.
    """
    modules = dict(unet.named_modules())
    processors = {}
    for name in unet.attn_processors:
        attn = modules[name.removesuffix(".processor")]
        if name.endswith("attn2.processor") and "temporal" not in name:
            processors[name] = DecoupledCrossAttnProcessor(
                attn.to_k.out_features, attn.to_k.in_features, audio_tokens, ip_tokens, scales
            )
        elif name.endswith("attn1.processor") and getattr(attn, "is_cross_attention", False):
            processors[name] = AudioCrossAttnProcessor(audio_tokens, ip_tokens)
        else:
            processors[name] = AttnProcessor2_0()
    unet.set_attn_processor(processors)


def set_ip_scales(unet: nn.Module, scales) -> None:
    """Change the emotion (and style) cross-attention scales at run time (e.g. emotion strength)."""
    for proc in unet.attn_processors.values():
        if isinstance(proc, DecoupledCrossAttnProcessor):
            proc.scale = list(scales)
