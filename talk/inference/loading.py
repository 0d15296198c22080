"""The trained artefacts a render needs, loaded with talk.artifacts, and the settings saved with them.

A render reads fit_vae's VAE (``paths.vae``), pretrain_prior's prior (``paths.prior``), a denoiser
(``paths.finetune_disc`` or ``paths.diffusion``, ``render.denoiser``) and the render-time settings
train_diffusion saved beside the denoiser (``inference.json``: sampling, Whisper features, face
crop, image size; talk/inference/settings.py). A missing artefact is one line naming the stage
that makes it; all three are checked before any is loaded.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from talk.core.errors import TalkError
from talk.core.params import parse
from talk.inference import settings as inference_settings

PRODUCERS = {  # artefact -> (what it is, stage that writes it, files it must hold)
    "vae": ("VAE", "fit_vae", ("config.json",)),
    "prior": ("emotion / style prior", "pretrain_prior", ("config.json", "model.safetensors")),
    "denoiser": ("denoiser", "finetune_disc", ("config.json",)),
}
CHUNKING = ("window_s", "context_s", "pad_windows", "batch", "precision")  # inference.json audio keys for encode_audio


def artefact_error(kind: str, path: Path, detail: str = "", stage: str | None = None) -> TalkError:
    what, default, _ = PRODUCERS[kind]
    stage = stage or default
    hint = f"run `talk {stage.replace('_', '-')}` or `dvc repro {stage}`"
    if stage == "finetune_disc":
        hint += " (or render with train_diffusion's denoiser: render.denoiser: diffusion)"
    return TalkError(f"{what} not found at {path}{': ' + detail if detail else ''}; {hint}")


def require(kind: str, path: Path, stage: str | None = None) -> Path:
    """``path`` when it is a folder holding the artefact's files, else the one-line TalkError
    naming the stage that writes it (``stage``: the denoiser's, finetune_disc by default)."""
    path = Path(path)
    if not path.is_dir():
        raise artefact_error(kind, path, stage=stage)
    missing = [n for n in PRODUCERS[kind][2] if not (path / n).exists()]
    if missing:
        raise artefact_error(kind, path, f"{', '.join(missing)} missing", stage)
    return path


@dataclasses.dataclass(frozen=True)
class Trained:
    """The render-time view of a denoiser's inference.json."""

    sampling: Any  # talk.inference.settings.SamplingConfig the denoiser was checked with
    whisper: str  # audio_features.whisper: tiny.en or a local openai-whisper .pt
    chunking: dict  # encode_audio keyword arguments (CHUNKING) of its training features
    face: Any  # talk.media.faces.FaceConfig of its training crops
    image_size: int  # px, side of its training crops


def read_trained(denoiser: Path, stage: str = "finetune_disc") -> Trained:
    """``<denoiser>/inference.json``, checked: every key the render uses must be there (``stage``:
    the one that wrote the denoiser, named in the messages)."""
    from talk.media.faces import FaceConfig

    path, command = Path(denoiser) / inference_settings.FILE, stage.replace("_", "-")
    info = inference_settings.read(denoiser, command)
    missing = [k for k in ("whisper", *CHUNKING) if k not in info.audio]
    if missing:
        raise TalkError(f"{path}: audio settings lack {', '.join(missing)}; re-run `talk {command}`")
    face = parse(FaceConfig, info.face, f"{path} face")
    return Trained(info.sampling, str(info.audio["whisper"]), {k: info.audio[k] for k in CHUNKING}, face, info.image_size)


def load_models(vae: Path, prior: Path, denoiser: Path, device, stage: str = "finetune_disc") -> dict[str, Any]:
    """{vae, vae_scale, prior, denoiser, schedule} on ``device``, in eval mode (all three checked first)."""
    from talk.artifacts.denoiser import load_denoiser
    from talk.artifacts.prior import load_prior
    from talk.artifacts.vae import load_vae
    from talk.models.denoiser import make_schedule

    for kind, path in (("vae", vae), ("prior", prior), ("denoiser", denoiser)):
        require(kind, path, stage if kind == "denoiser" else None)
    net = load_denoiser(denoiser, device).requires_grad_(False)
    vae_model, scale, _ = load_vae(vae, device)
    return {"vae": vae_model, "vae_scale": float(scale), "prior": load_prior(prior, device), "denoiser": net,
            "schedule": make_schedule(net.spec).to(device)}


def check_shapes(spec, vae, prior, whisper) -> None:
    """One-line errors for artefacts from different trainings."""
    dims = whisper.dims
    if (dims.n_audio_layer + 1, dims.n_audio_state) != (spec.audio_layers, spec.audio_dim):
        raise TalkError(f"the denoiser was trained on audio features (L={spec.audio_layers}, D={spec.audio_dim}) "
                        f"but the Whisper model gives (L={dims.n_audio_layer + 1}, D={dims.n_audio_state}): "
                        f"use the audio_features.whisper it was trained with")
    if vae.config.latent_channels != spec.latent_channels:
        raise TalkError(f"the VAE has {vae.config.latent_channels} latent channels, the denoiser "
                        f"{spec.latent_channels}: they come from different trainings")
    presets = prior.presets
    if presets:
        dim = next(iter(presets.values()))[0].numel()
        if dim != spec.emotion_dim:
            raise TalkError(f"the prior's presets have {dim} dimensions, the denoiser expects {spec.emotion_dim}")


def check_image_size(spec, vae, trained: Trained, denoiser: Path) -> None:
    """The crops the denoiser was trained on have the size the VAE and denoiser make."""
    from talk.artifacts.vae import vae_factor

    made = spec.latent_size * vae_factor(vae)
    if made != trained.image_size:
        raise TalkError(f"{Path(denoiser) / inference_settings.FILE}: trained on {trained.image_size} px crops, but "
                        f"the VAE and denoiser make {made} px: they come from different trainings")
