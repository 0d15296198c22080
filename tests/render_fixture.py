"""Untrained stand-in artefacts in the real formats, for render tests and benchmarks/render.py.

Every model is instantiated from the project's real classes and written by the real writers
(``save_vae``, pretrain_prior's config.json + safetensors + ``save_presets``, ``save_denoiser``
with the ``inference.json`` train_diffusion writes beside it, an openai-whisper checkpoint dict),
so ``TalkPipeline`` loads them exactly as it loads trained ones. Weights are random: speed and
plumbing, not quality.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from talk.models.emotions import EMOTIONS


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Shapes of the stand-in models (tiny by default; ``default_profile`` for benchmarks)."""

    image_size: int = 32  # px
    vae_channels: tuple[int, ...] = (8, 16)  # VAE widths (latent side = image_size / 2^(n-1))
    vae_groups: int = 4
    latent_channels: int = 4
    motion_frames: int = 2
    target_frames: int = 1
    audio_window: int = 4
    whisper_layers: int = 1  # encoder blocks (L = layers + 1)
    whisper_width: int = 16  # D
    emb_dim: int = 8  # prior / bank embedding size
    backbone: str = "frame"
    unet_channels: tuple[int, ...] = (16, 32)
    attention_levels: tuple[bool, ...] = (False, True)
    attention_head_dim: int = 8
    cross_attention_dim: int = 16
    unet_groups: int = 8
    style_tokens: int = 0
    # full configs (default profile): used as they are when given
    prior: object = None  # models.prior_config.PriorConfig
    bank: object = None  # models.prior_config.EmotionBankConfig
    denoiser: object = None  # models.denoiser_config.DenoiserConfig
    conditioning: object = None  # models.denoiser_config.ConditioningConfig
    diffusion: object = None  # models.denoiser_config.DiffusionConfig


def default_profile(params) -> Sizes:
    """The sizes params.yaml's model section gives (what `talk render` runs on the default profile)."""
    from talk.models.denoiser_config import ConditioningConfig, DenoiserConfig, DiffusionConfig

    m = params.model
    den = getattr(m, "denoiser", None) or DenoiserConfig()
    cond = getattr(m, "conditioning", None) or ConditioningConfig()
    diff = getattr(m, "diffusion", None) or DiffusionConfig()
    heads = tuple(h for h in m.prior.heads if cond.style_tokens or h == "emotion") or m.prior.heads
    return Sizes(
        image_size=m.image_size, vae_channels=tuple(m.vae.block_out_channels), vae_groups=m.vae.norm_num_groups,
        latent_channels=m.vae.latent_channels, motion_frames=m.motion_frames, target_frames=m.target_frames,
        audio_window=m.audio_window, whisper_layers=m.prior.audio_layers - 1, whisper_width=m.prior.audio_dim,
        emb_dim=m.prior.emb_dim, backbone=den.backbone, style_tokens=cond.style_tokens,
        prior=dataclasses.replace(m.prior, heads=heads), bank=m.bank, denoiser=den, conditioning=cond, diffusion=diff,
    )


def tiny_whisper(path: Path, layers: int, width: int) -> Path:
    """An openai-whisper checkpoint ({"dims", "model_state_dict"}) with a small random encoder."""
    from whisper.model import ModelDimensions, Whisper

    torch.manual_seed(0)
    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=width, n_audio_head=max(1, width // 8),
                           n_audio_layer=layers, n_vocab=64, n_text_ctx=8, n_text_state=width,
                           n_text_head=max(1, width // 8), n_text_layer=1)
    model = Whisper(dims)
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": model.state_dict()}, path)
    return path


def write_vae(folder: Path, s: Sizes, scaling_factor: float = 0.8) -> Path:
    from talk.artifacts.vae import save_vae
    from talk.models.vae import VaeConfig, build_vae

    torch.manual_seed(1)
    vae = build_vae(VaeConfig(block_out_channels=s.vae_channels, latent_channels=s.latent_channels,
                              norm_num_groups=s.vae_groups), s.image_size)
    vae.register_to_config(scaling_factor=scaling_factor)
    save_vae(vae, folder)
    return folder


def prior_configs(s: Sizes):
    from talk.models.prior_config import EmotionBankConfig, PriorConfig

    if s.prior is not None and s.bank is not None:
        return s.prior, s.bank
    heads = ("emotion", "style") if s.style_tokens else ("emotion",)
    prior = PriorConfig(heads=heads, emb_dim=s.emb_dim, width=16, layers=1, attn_heads=2,
                        audio_layers=s.whisper_layers + 1, audio_dim=s.whisper_width)
    bank = EmotionBankConfig(emb_dim=s.emb_dim, n_codes=4, code_dim=16, attn_heads=2, n_queries=2, n_tokens=2,
                             token_dim=s.cross_attention_dim)
    return prior, bank


def write_prior(folder: Path, s: Sizes) -> Path:
    """pretrain_prior's format: config.json, model.safetensors, presets.safetensors.

    Presets: every emotion, every (emotion, level) of the 7 non-neutral ones, and two style/<speaker>.
    """
    from talk.artifacts.files import save_safetensors

    from talk.artifacts.prior import FORMAT, VERSION, save_presets
    from talk.core.params import to_plain
    from talk.models.prior import PriorModel

    prior, bank = prior_configs(s)
    torch.manual_seed(2)
    model = PriorModel(prior, bank)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"format": FORMAT, "version": VERSION, "prior": to_plain(prior), "bank": to_plain(bank),
              "bank_head": model.bank_head, "emotions": list(EMOTIONS)}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_safetensors(folder / "model.safetensors", model.state_dict())  # the writer pretrain_prior uses (0644)
    rng = np.random.default_rng(3)
    presets = {}
    for i, e in enumerate(EMOTIONS):
        mean = rng.normal(0, 1, s.emb_dim).astype(np.float32) * (0 if e == "neutral" else 1)
        presets[f"emotion/{e}"] = (mean, np.full(s.emb_dim, -2.0, np.float32))
        if e != "neutral":
            for lv in (1, 2, 3):
                presets[f"emotion/{e}/{lv}"] = (mean * lv / 2, np.full(s.emb_dim, -2.0, np.float32))
    for spk in ("M001", "W001") if "style" in prior.heads else ():
        presets[f"style/{spk}"] = (rng.normal(0, 1, s.emb_dim).astype(np.float32), np.full(s.emb_dim, -2.0, np.float32))
    save_presets(folder / "presets.safetensors", presets, source="render test fixture")
    return folder


def denoiser_spec(s: Sizes):
    from talk.models.denoiser import DenoiserSpec
    from talk.models.denoiser_config import ConditioningConfig, DenoiserConfig, DiffusionConfig

    _, bank = prior_configs(s)
    latent = s.image_size // 2 ** (len(s.vae_channels) - 1)
    den = s.denoiser or DenoiserConfig(backbone=s.backbone, block_out_channels=s.unet_channels,
                                       attention_levels=s.attention_levels, attention_head_dim=s.attention_head_dim,
                                       cross_attention_dim=s.cross_attention_dim, norm_num_groups=s.unet_groups)
    cond = s.conditioning or ConditioningConfig(audio_tokens=4, audio_hidden=16, style_tokens=s.style_tokens)
    return DenoiserSpec(
        denoiser=den, conditioning=cond, diffusion=s.diffusion or DiffusionConfig(),
        latent_channels=s.latent_channels, latent_size=latent, motion_frames=s.motion_frames,
        target_frames=s.target_frames, audio_window=s.audio_window, audio_layers=s.whisper_layers + 1,
        audio_dim=s.whisper_width, emotion_dim=bank.emb_dim, emotion_tokens=bank.n_tokens,
        emotion_token_dim=bank.token_dim, style_dim=s.emb_dim if cond.style_tokens else 0,
    )


AUDIO = {"whisper": "tiny.en", "window_s": 30.0, "context_s": 5.0, "pad_windows": False, "batch": 4,
         "precision": "float32"}  # inference.json audio settings of the stand-in denoiser (encode_audio's defaults)


def write_denoiser(folder: Path, s: Sizes, audio: dict | None = None, sampling=None, face=None) -> Path:
    """train_diffusion's format: config.json, model.safetensors, scheduler_config.json and the
    render-time settings inference.json (``sampling``: a SamplingConfig, default its defaults;
    ``audio``: AUDIO with overrides; ``face``: a FaceConfig, default its defaults)."""
    from talk.artifacts.denoiser import build_denoiser, save_denoiser
    from talk.core.params import to_plain
    from talk.inference import settings
    from talk.media.faces import FaceConfig
    from talk.models.emotion_bank import EmotionBank

    _, bank = prior_configs(s)
    torch.manual_seed(4)
    model = build_denoiser(denoiser_spec(s), EmotionBank(bank))
    save_denoiser(model, folder)
    settings.write(folder, sampling or settings.SamplingConfig(), {**AUDIO, **(audio or {})},
                   to_plain(face or FaceConfig()), s.image_size)
    return folder


def make_artifacts(root: Path, s: Sizes | None = None) -> dict[str, Path]:
    """``root/{vae,prior,finetune_disc,whisper.pt}`` in the real formats (the denoiser's
    inference.json names whisper.pt). Returns the paths."""
    s = s or Sizes()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    whisper = tiny_whisper(root / "whisper.pt", s.whisper_layers, s.whisper_width)
    return {
        "vae": write_vae(root / "vae", s),
        "prior": write_prior(root / "prior", s),
        "denoiser": write_denoiser(root / "finetune_disc", s, {"whisper": str(whisper)}),
        "whisper": whisper,
    }


def portrait(size: int = 96) -> np.ndarray:
    """A synthetic RGB picture (no face) for --no-crop renders."""
    y, x = np.mgrid[0:size, 0:size] / size
    img = np.stack([0.3 + 0.5 * x, 0.4 + 0.3 * y, 0.6 - 0.3 * x * y], -1)
    return (img * 255).astype(np.uint8)


def speech(seconds: float, rate: int = 16_000, seed: int = 0) -> np.ndarray:
    """A speech-like test signal: voiced harmonics under a syllable-rate envelope."""
    t = np.arange(int(seconds * rate)) / rate
    env = np.clip(np.sin(2 * np.pi * 3.0 * t), 0, None) ** 2
    f0 = 140 + 20 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    sig = sum(np.sin(k * phase) / k for k in range(1, 6))
    noise = np.random.default_rng(seed).normal(0, 0.01, len(t))
    return (0.3 * env * sig + noise).astype(np.float32)
