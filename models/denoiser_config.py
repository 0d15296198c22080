"""Architecture configs of the denoiser family (nested into ``model:`` of params.yaml).

Torch-free on purpose: talk/core/params.py imports this module to type ``model.denoiser`` etc., and
`talk --help` must stay fast. The modules they configure live in models/denoiser.py,
models/conditioning.py, models/diffusion.py and models/discriminator.py.
"""

from __future__ import annotations

import dataclasses

from talk.models.errors import ConfigError

BACKBONES = ("frame", "clip")
SCHEDULERS = ("ddpm", "ddim", "euler")
PREDICTIONS = ("epsilon", "v_prediction")


@dataclasses.dataclass(frozen=True)
class DenoiserConfig:
    """The UNet backbone (DICE-Talk §3.1: SVD img2vid; SVP §3: fine-tuned SD UNet).

    ``frame``: a diffusers ``UNet2DConditionModel`` denoising one frame at a time; its input is the
    noisy latent ⊕ reference latent ⊕ M motion-frame latents along channels.
    ``clip``: diffusers' ``UNetSpatioTemporalConditionModel`` over F-frame windows (SVD's
    arrangement), the same channel concatenation per frame; can start from SVD weights.
    """

    backbone: str = dataclasses.field(default="frame", metadata={"choices": BACKBONES})  # frame (one frame, UNet2DConditionModel) | clip (F frames, UNetSpatioTemporalConditionModel)
    block_out_channels: tuple[int, ...] = dataclasses.field(default=(32, 64, 128), metadata={"range": (8, None)})  # UNet widths per level, full latent resolution first
    attention_levels: tuple[bool, ...] = (False, False, True)  # cross/self attention per level (attention at full resolution dominates CPU cost)
    audio_levels: tuple[int, ...] = ()  # frame backbone: levels (0 = full latent resolution) without attention_levels that get audio cross-attention blocks (no self-attention); () = audio only where attention_levels is on
    layers_per_block: int = dataclasses.field(default=1, metadata={"range": (1, None)})  # resnets per level
    attention_head_dim: int = dataclasses.field(default=32, metadata={"range": (4, None)})  # channels per attention head
    cross_attention_dim: int = dataclasses.field(default=128, metadata={"range": (8, None)})  # D: width of every condition token (audio, emotion, style)
    norm_num_groups: int = dataclasses.field(default=16, metadata={"range": (1, None)})  # GroupNorm groups; divides every width
    pretrained: str = ""  # local diffusers UNet folder to start from (clip: SVD's unet/); "" = random init
    gradient_checkpointing: bool = False  # recompute activations in backward (less memory, ~30% slower)
    addition_time_embed_dim: int = dataclasses.field(default=32, metadata={"range": (1, None)})  # clip: width per SVD added-time id (fps, motion bucket, noise aug)
    svd_fps: int = dataclasses.field(default=25, metadata={"range": (1, None)})  # clip: SVD added-time id "fps"
    svd_motion_bucket: int = dataclasses.field(default=127, metadata={"range": (0, None)})  # clip: SVD added-time id "motion bucket"
    svd_noise_aug: float = dataclasses.field(default=0.02, metadata={"range": (0.0, None)})  # clip: SVD added-time id "noise augmentation strength"

    def validate(self) -> None:

        if len(self.attention_levels) != len(self.block_out_channels):
            raise ConfigError(
                f"model.denoiser.attention_levels has {len(self.attention_levels)} entries, "
                f"block_out_channels {len(self.block_out_channels)}"
            )
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups or c % self.attention_head_dim]
        if bad:
            raise ConfigError(
                f"model.denoiser widths {bad} are not multiples of norm_num_groups={self.norm_num_groups} "
                f"and attention_head_dim={self.attention_head_dim}"
            )
        if self.backbone == "clip" and not self.pretrained and any(c % 32 for c in self.block_out_channels):
            raise ConfigError("model.denoiser.block_out_channels: the clip backbone's resnets use 32 groups; widths must be multiples of 32")
        n = len(self.block_out_channels)
        bad_levels = [i for i in self.audio_levels if not 0 <= i < n]
        if bad_levels:
            raise ConfigError(f"model.denoiser.audio_levels {bad_levels}: levels run 0..{n - 1}")
        if self.audio_levels and self.backbone != "frame":
            raise ConfigError("model.denoiser.audio_levels: only the frame backbone has audio-only cross-attention blocks")
        if self.backbone == "frame" and not any(self.attention_levels):
            raise ConfigError("model.denoiser.attention_levels: the frame backbone needs attention on at least one level")


@dataclasses.dataclass(frozen=True)
class ConditioningConfig:
    """Condition encoders and decoupled cross-attention (DICE-Talk §3.2; SVP §3.3).

    Audio tokens are the main cross-attention context; emotion (Emotion Bank) and style tokens
    each get their own key/value projections and scale (IP-Adapter-style decoupled attention).
    """

    audio_tokens: int = dataclasses.field(default=8, metadata={"range": (1, None)})  # tokens per video frame from its Whisper window (DICE-Talk: 32)
    audio_hidden: int = dataclasses.field(default=64, metadata={"range": (1, None)})  # width of the per-Whisper-frame projection (all layers -> this)
    emotion_scale: float = dataclasses.field(default=1.0, metadata={"range": (0.0, None)})  # weight of the emotion cross-attention output
    style_tokens: int = dataclasses.field(default=4, metadata={"range": (0, None)})  # SVP style tokens; 0 = no style conditioning
    style_scale: float = dataclasses.field(default=1.0, metadata={"range": (0.0, None)})  # weight of the style cross-attention output


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    """The noise schedule and parameterisation the denoiser is trained with (saved with it)."""

    scheduler: str = dataclasses.field(default="ddpm", metadata={"choices": SCHEDULERS})  # diffusers scheduler class whose betas define the schedule (saved as scheduler_config.json)
    num_train_timesteps: int = dataclasses.field(default=1000, metadata={"range": (2, None)})  # discrete noise levels
    beta_schedule: str = dataclasses.field(default="scaled_linear", metadata={"choices": ("linear", "scaled_linear", "squaredcos_cap_v2")})  # diffusers beta schedule
    beta_start: float = dataclasses.field(default=0.00085, metadata={"range": (0.0, 1.0)})  # first beta (linear schedules)
    beta_end: float = dataclasses.field(default=0.012, metadata={"range": (0.0, 1.0)})  # last beta (linear schedules)
    prediction_type: str = dataclasses.field(default="v_prediction", metadata={"choices": PREDICTIONS})  # what the network predicts
    timestep_input: str = dataclasses.field(default="index", metadata={"choices": ("index", "log_sigma")})  # timestep fed to the UNet: schedule index, or 0.25·ln σ (SVD/EDM)


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig:
    """The emotion classifier on the denoiser's mid-block features (DICE-Talk §3.3)."""

    classes: str = dataclasses.field(default="emotion", metadata={"choices": ("joint", "emotion")})  # joint: 22 emotion×level classes; emotion: 8
    hidden: int = dataclasses.field(default=128, metadata={"range": (1, None)})  # MLP width
    time_embed_dim: int = dataclasses.field(default=64, metadata={"range": (2, None)})  # sinusoidal timestep embedding width
