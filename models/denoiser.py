"""The talking-portrait denoiser: a diffusers UNet with reference/motion channels and token conditions.

DICE-Talk §3.1-3.2 (and SVP §3.3): the noisy latent of the target frame(s) is concatenated along
channels with the reference-frame latent (identity) and M motion-frame latents (the frames before
the window), and the UNet cross-attends to per-frame audio tokens (its own attention) and to
emotion / style tokens (decoupled attention, models/conditioning.py).

Backbones (string-to-class factory ``make_backbone``):

* ``frame``: ``UNet2DConditionModel`` on one frame; a window of F frames is folded into the batch;
* ``clip``: ``UNetSpatioTemporalConditionModel`` (SVD) on the whole (B, F, ...) window.

Every condition can be dropped per sample with a ``keep`` mask (reference and motion: zeroed
latents; audio / emotion / style: learned null tokens), which is what condition dropout in
training and multi-branch guidance in sampling use.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from talk.models.conditioning import ConditionEncoder, install_processors, pack_context, set_ip_scales
from talk.models.denoiser_config import ConditioningConfig, DenoiserConfig, DiffusionConfig
from talk.models.diffusion import NoiseSchedule
from talk.models.errors import ConfigError

CONDITIONS = ("ref", "motion", "audio", "emotion", "style")  # what a ``keep`` mask can drop
AUG_SCALE = 1000.0  # context-noise σ -> the sinusoidal embedding's input (σ = 1 ~ the last timestep index)


@dataclasses.dataclass(frozen=True)
class DenoiserSpec:
    """Everything needed to rebuild a ``TalkDenoiser`` (saved as its config.json)."""

    denoiser: DenoiserConfig
    conditioning: ConditioningConfig
    diffusion: DiffusionConfig
    latent_channels: int  # C of the VAE latent
    latent_size: int  # h = w of the latent
    motion_frames: int  # M
    target_frames: int  # F
    audio_window: int  # k: Whisper frames per video frame
    audio_layers: int  # L: Whisper hidden states stacked (embedding + layers)
    audio_dim: int  # D: Whisper width
    emotion_dim: int  # width of the emotion embedding z fed to the Emotion Bank
    emotion_tokens: int  # Ne: tokens the bank returns
    emotion_token_dim: int  # width of the bank's tokens
    style_dim: int = 0  # width of the style embedding (0: none)
    context_aug: bool = False  # noise-augmented context (SVD / Hallo): reference + motion latents get noise of a per-sample σ, which the UNet sees (added to its time embedding)
    residual: bool = False  # the denoised quantity is target − reference latent (the change from the reference), not the frame
    unet: dict = dataclasses.field(default_factory=dict)  # resolved diffusers config of the backbone

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["unet"] = _plain(dict(self.unet))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DenoiserSpec:
        """The spec saved by ``to_dict``, strictly: a missing or unknown key is a ConfigError."""
        d = dict(_exact_keys(cls, d, "spec"))
        d["denoiser"] = _build(DenoiserConfig, d["denoiser"], "spec.denoiser")
        d["conditioning"] = _build(ConditioningConfig, d["conditioning"], "spec.conditioning")
        d["diffusion"] = _build(DiffusionConfig, d["diffusion"], "spec.diffusion")
        if not isinstance(d["unet"], dict):
            raise ConfigError(f"spec.unet: expected a mapping, got {type(d['unet']).__name__}")
        return cls(**d)

    @property
    def in_channels(self) -> int:
        return self.latent_channels * (2 + self.motion_frames)


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _exact_keys(cls, d: Any, where: str) -> dict:
    """``d`` when its keys are exactly the init fields of the dataclass ``cls`` (else ConfigError)."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(d).__name__}")
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown, missing = sorted(set(d) - fields), sorted(fields - set(d))
    if unknown or missing:
        parts = [f"unknown keys {unknown}" if unknown else "", f"missing keys {missing}" if missing else ""]
        raise ConfigError(f"{where}: {'; '.join(p for p in parts if p)}")
    return d


def _build(cls, d: dict, where: str):
    """A saved config dataclass, strictly (no key defaulted, none ignored), validated."""
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in _exact_keys(cls, d, where).items()}
    obj = cls(**kw)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return obj


# --------------------------------------------------------------------------------------------
# Backbones


def _heads(cfg: DenoiserConfig) -> tuple[int, ...]:
    return tuple(max(1, c // cfg.attention_head_dim) for c in cfg.block_out_channels)


def backbone_config(spec: DenoiserSpec) -> dict:
    """A fresh backbone's diffusers config from the spec (widths, attention levels, channels)."""
    cfg = spec.denoiser
    n = len(cfg.block_out_channels)
    if cfg.backbone == "frame":
        attn = [a or i in cfg.audio_levels for i, a in enumerate(cfg.attention_levels)]
        only_cross = [bool(i in cfg.audio_levels and not a) for i, a in enumerate(cfg.attention_levels)]
        down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn]
        up = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)]
        extra = {"only_cross_attention": only_cross} if any(only_cross) else {}
        if spec.context_aug:  # the context-noise σ through a second sinusoidal embedding, added to the time embedding
            extra["class_embed_type"] = "timestep"
        return dict(
            sample_size=spec.latent_size,
            in_channels=spec.in_channels,
            out_channels=spec.latent_channels,
            down_block_types=down,
            up_block_types=up,
            block_out_channels=list(cfg.block_out_channels),
            layers_per_block=cfg.layers_per_block,
            norm_num_groups=cfg.norm_num_groups,
            cross_attention_dim=cfg.cross_attention_dim,
            attention_head_dim=list(_heads(cfg)),  # diffusers' legacy name: the number of heads
            mid_block_type="UNetMidBlock2DCrossAttn",
            **extra,
        )
    if cfg.backbone == "clip":
        down = ["CrossAttnDownBlockSpatioTemporal" if a else "DownBlockSpatioTemporal" for a in cfg.attention_levels]
        up = ["CrossAttnUpBlockSpatioTemporal" if a else "UpBlockSpatioTemporal" for a in reversed(cfg.attention_levels)]
        return dict(
            sample_size=spec.latent_size,
            in_channels=spec.in_channels,
            out_channels=spec.latent_channels,
            down_block_types=down,
            up_block_types=up,
            block_out_channels=list(cfg.block_out_channels),
            layers_per_block=cfg.layers_per_block,
            cross_attention_dim=cfg.cross_attention_dim,
            num_attention_heads=list(_heads(cfg)),
            addition_time_embed_dim=cfg.addition_time_embed_dim,
            projection_class_embeddings_input_dim=3 * cfg.addition_time_embed_dim,
            num_frames=spec.target_frames,
        )
    raise ValueError(f"unknown backbone {cfg.backbone!r}; choose one of {', '.join(BACKBONES)}")


def _backbone_classes() -> dict:
    from diffusers import UNet2DConditionModel, UNetSpatioTemporalConditionModel

    return {"frame": UNet2DConditionModel, "clip": UNetSpatioTemporalConditionModel}


BACKBONES = ("frame", "clip")


def make_backbone(kind: str, config: dict) -> nn.Module:
    """The diffusers UNet class for ``kind``, built from its config dict."""
    classes = _backbone_classes()
    if kind not in classes:
        raise ValueError(f"unknown backbone {kind!r}; choose one of {', '.join(classes)}")
    return classes[kind].from_config(dict(config))


def backbone_class(kind: str) -> type:
    classes = _backbone_classes()
    if kind not in classes:
        raise ValueError(f"unknown backbone {kind!r}; choose one of {', '.join(classes)}")
    return classes[kind]


def expand_conv_in(unet: nn.Module, in_channels: int) -> nn.Module:
    """Widen a pretrained UNet's ``conv_in`` to ``in_channels`` (new channels start at zero).

    SVD's conv_in takes noisy latent ⊕ image latent (8 channels); ours adds M motion frames after
    them, so the pretrained filters keep their meaning and the motion filters start silent.
    """
    old = unet.conv_in
    if old.in_channels == in_channels:
        return unet
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding)
    with torch.no_grad():
        new.weight.zero_()
        n = min(in_channels, old.in_channels)
        new.weight[:, :n] = old.weight[:, :n]
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)
    return unet


# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class DenoiserOutput:
    sample: torch.Tensor  # (B, F, C, h, w) the network's prediction (ε or v)
    vq_loss: torch.Tensor  # scalar: Emotion Bank VQ loss (0 without emotion input)
    features: torch.Tensor | None = None  # (B, F, Cm, h', w') mid-block output, when asked for


class _Stop(Exception):
    """Raised by the mid-block hook to end a features-only forward early."""


class TalkDenoiser(nn.Module):
    """UNet + condition encoders + Emotion Bank, trained jointly (DICE-Talk §3.2)."""

    def __init__(self, spec: DenoiserSpec, emotion_bank: nn.Module, backbone: nn.Module | None = None):
        super().__init__()
        if not spec.unet:
            spec = dataclasses.replace(spec, unet=backbone_config(spec))
        if backbone is None:
            backbone = make_backbone(spec.denoiser.backbone, spec.unet)
        self.spec = spec
        self.backbone = backbone
        self.emotion_bank = emotion_bank
        dim = spec.unet["cross_attention_dim"]
        self.cond = ConditionEncoder(
            spec.conditioning,
            dim,
            spec.audio_window,
            spec.audio_layers,
            spec.audio_dim,
            spec.emotion_tokens,
            spec.emotion_token_dim,
            spec.style_dim,
        )
        if spec.context_aug and spec.denoiser.backbone == "frame" and getattr(backbone, "class_embedding", None) is None:
            raise ConfigError("context_aug needs a frame UNet with class_embed_type 'timestep' (a fresh backbone has one)")
        install_processors(backbone, spec.conditioning.audio_tokens, self.cond.ip_tokens, self.cond.ip_scales)
        if spec.denoiser.gradient_checkpointing:
            backbone.enable_gradient_checkpointing()
        self._capture: dict | None = None
        backbone.mid_block.register_forward_hook(self._mid_hook)
        if spec.denoiser.backbone == "clip":
            d = spec.denoiser
            ids = torch.tensor([d.svd_fps - 1, d.svd_motion_bucket, d.svd_noise_aug], dtype=torch.float32)
            self.register_buffer("added_time_ids", ids, persistent=False)  # SVD's (fps-1, motion bucket, noise aug)

    def _mid_hook(self, module, args, output):
        if self._capture is not None:
            self._capture["features"] = output
            if self._capture["stop"]:
                raise _Stop

    def set_condition_scales(self, emotion: float | None = None, style: float | None = None) -> None:
        """Scale of the emotion / style cross-attention (the emotion strength at render time)."""
        scales = self.cond.ip_scales
        if emotion is not None:
            scales[0] = emotion
        if style is not None and len(scales) > 1:
            scales[1] = style
        set_ip_scales(self.backbone, scales)

    def _keep(self, keep: dict | None, b: int, device) -> dict[str, torch.Tensor]:
        keep = dict(keep or {})
        unknown = set(keep) - set(CONDITIONS)
        if unknown:
            raise ValueError(f"unknown condition(s) {sorted(unknown)}; known: {CONDITIONS}")
        ones = torch.ones(b, dtype=torch.bool, device=device)
        return {k: keep[k].to(device=device, dtype=torch.bool) if k in keep else ones for k in CONDITIONS}

    def tokens(self, b: int, audio, emotion, style, keep) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list]:
        """Audio tokens (B, F, Na, D), decoupled sets [(B, N, D)] and the bank's VQ loss."""
        audio_tok = self.cond.encode_audio(audio, keep["audio"])  # (B, F, Na, D)
        if emotion is None:
            vq = audio_tok.new_zeros(())
            emo = self.cond.null_emotion.to(audio_tok.dtype).expand(b, -1, -1)  # (B, Ne, D)
        else:
            bank = self.emotion_bank(emotion)
            vq = bank.vq_loss
            emo = self.cond.encode_emotion(bank.tokens.to(audio_tok.dtype), keep["emotion"])
        ip = [emo]
        style_tok = self.cond.encode_style(style, keep["style"])
        if style_tok is not None:
            ip.append(style_tok)
        return audio_tok, vq, ip

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        ref: torch.Tensor,
        motion: torch.Tensor | None,
        audio: torch.Tensor,
        emotion: torch.Tensor | None = None,
        style: torch.Tensor | None = None,
        keep: dict | None = None,
        features: bool = False,
        features_only: bool = False,
        aug: torch.Tensor | None = None,
        aug_noise: torch.Tensor | None = None,
    ) -> DenoiserOutput:
        """Predict ε / v for noisy latents.

        sample (B, F, C, h, w) noisy latents at the UNet's input scale; timestep (B,) UNet
        timestep input; ref (B, C, h, w); motion (B, M, C, h, w) or None (M = 0); audio
        (B, F, k, L, D) Whisper windows; emotion (B, E) emotion embedding z for the bank; style
        (B, S); keep {condition: (B,) bool}. ``features`` also returns the mid-block output;
        ``features_only`` stops after the mid block (``sample`` is then None). ``aug`` (B,) σ of the
        context noise and ``aug_noise`` (B, 1+M, C, h, w) unit noise (spec.context_aug): the
        reference and motion latents become ``x + σ·noise`` and the UNet is told σ (None: σ = 0).
        """
        b, f, c, h, w = sample.shape
        keep = self._keep(keep, b, sample.device)
        dtype = sample.dtype
        aug_t = None
        if self.spec.context_aug:
            aug = sample.new_zeros(b) if aug is None else aug.to(dtype).reshape(b)
            if aug_noise is not None:
                s = aug.view(b, 1, 1, 1)
                ref = ref.to(dtype) + s * aug_noise[:, 0].to(dtype)
                if motion is not None:
                    motion = motion.to(dtype) + s[:, None] * aug_noise[:, 1:].to(dtype)
            aug_t = aug * AUG_SCALE  # the UNet's input: σ on the scale of the timestep indices
        k_ref = keep["ref"].view(b, 1, 1, 1).to(dtype)
        parts = [ref.to(dtype) * k_ref]  # (B, C, h, w)
        if self.spec.motion_frames:
            if motion is None:
                raise ValueError(f"this denoiser needs {self.spec.motion_frames} motion frames")
            k_mot = (keep["ref"] & keep["motion"]).view(b, 1, 1, 1).to(dtype)
            parts.append(motion.to(dtype).flatten(1, 2) * k_mot)  # (B, M·C, h, w)
        cond = torch.cat(parts, dim=1)[:, None].expand(b, f, -1, h, w)
        x = torch.cat([sample, cond], dim=2)  # (B, F, C(2+M), h, w)

        audio_tok, vq, ip = self.tokens(b, audio, emotion, style, keep)
        timestep = timestep.reshape(-1).expand(b) if timestep.numel() in (1, b) else timestep
        self._capture = {"stop": features_only} if (features or features_only) else None
        try:
            if self.spec.denoiser.backbone == "clip":
                context = pack_context(audio_tok.flatten(1, 2), ip)  # (B, F·Na + ΣN, D)
                ids = self.added_time_ids.to(dtype).expand(b, -1)
                if aug_t is not None:  # SVD's own noise-augmentation id, per sample
                    ids = torch.cat([ids[:, :2], aug[:, None]], dim=1)
                out = self.backbone(x, timestep, encoder_hidden_states=context, added_time_ids=ids).sample
            else:
                context = pack_context(audio_tok.flatten(0, 1), [s.repeat_interleave(f, 0) for s in ip])  # (B·F, Na + ΣN, D)
                kw = {"class_labels": aug_t.repeat_interleave(f)} if aug_t is not None else {}
                out = self.backbone(x.flatten(0, 1), timestep.repeat_interleave(f), encoder_hidden_states=context, **kw).sample
                out = out.view(b, f, *out.shape[1:])
        except _Stop:
            out = None
        feats = None
        if self._capture is not None:
            mid = self._capture["features"]  # (B·F, Cm, h', w')
            feats = mid.view(b, f, *mid.shape[1:])
            self._capture = None
        return DenoiserOutput(sample=out, vq_loss=vq, features=feats)

    @property
    def feature_channels(self) -> int:
        return self.spec.unet["block_out_channels"][-1]


def make_schedule(spec: DenoiserSpec) -> NoiseSchedule:
    return NoiseSchedule(spec.diffusion)
