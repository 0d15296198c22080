"""The denoiser artefact (train_diffusion's and finetune_disc's output): config.json (format,
version, the DenoiserSpec and the Emotion Bank config), model.safetensors, scheduler_config.json
and, after finetune_disc, discriminator.safetensors; building, saving and loading them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from talk.core.errors import TalkError
from talk.core.fs import read_artifact_config
from talk.core.params import to_plain
from talk.models.denoiser_config import DiscriminatorConfig

if TYPE_CHECKING:
    from torch import nn

    from talk.models.denoiser import DenoiserSpec, TalkDenoiser
    from talk.models.discriminator import EmotionDiscriminator


FORMAT = "talk-denoiser"


VERSION = 1


def pretrained_backbone(spec: DenoiserSpec) -> nn.Module | None:
    """Load ``model.denoiser.pretrained`` (a local diffusers UNet folder) and widen its conv_in."""
    from talk.models.denoiser import backbone_class, expand_conv_in

    if not spec.denoiser.pretrained:
        return None
    path = Path(spec.denoiser.pretrained).expanduser()
    if (path / "unet" / "config.json").is_file():
        path = path / "unet"
    if not (path / "config.json").is_file():
        raise TalkError(f"model.denoiser.pretrained: no diffusers UNet (config.json) in {path}")
    try:
        unet = backbone_class(spec.denoiser.backbone).from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, EnvironmentError) as e:
        raise TalkError(f"model.denoiser.pretrained: cannot load {path}: {e}") from None
    if unet.config.out_channels != spec.latent_channels:
        raise TalkError(f"pretrained UNet {path} predicts {unet.config.out_channels} channels, the latents have {spec.latent_channels}")
    return expand_conv_in(unet, spec.in_channels)


def build_denoiser(spec: DenoiserSpec, bank: nn.Module, backbone: nn.Module | None = None) -> TalkDenoiser:
    from talk.models.denoiser import TalkDenoiser

    if backbone is not None:
        spec = dataclasses.replace(spec, unet=dict(backbone.config))
    model = TalkDenoiser(spec, bank, backbone)
    readout = getattr(bank, "readout", None)  # the prior's pretraining head: unused by the denoiser
    if readout is not None:
        readout.requires_grad_(False)
    return model


def _bank_config(bank) -> dict:
    cfg = getattr(bank, "cfg", None)
    if not dataclasses.is_dataclass(cfg):
        raise TypeError("the Emotion Bank must carry its dataclass config as .cfg")
    return to_plain(cfg)


def save_denoiser(model: TalkDenoiser, folder: Path, extra: dict | None = None) -> None:
    """config.json + model.safetensors + scheduler_config.json into ``folder`` (already a temp dir)."""
    from safetensors.torch import save_file

    from talk.models.diffusion import make_scheduler

    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "format": FORMAT,
        "version": VERSION,
        "spec": model.spec.to_dict(),
        "emotion_bank": _bank_config(model.emotion_bank),
        **(extra or {}),
    }
    (folder / "config.json").write_text(json.dumps(to_plain(config), indent=2) + "\n")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": FORMAT, "version": str(VERSION)})
    make_scheduler(model.spec.diffusion).save_config(str(folder))


def read_config(path: Path) -> dict:
    return read_artifact_config(path, FORMAT, VERSION, "denoiser", "train-diffusion")


def load_denoiser(path: Path | str, device: Any = "cpu", bank_factory=None) -> TalkDenoiser:
    """Rebuild a denoiser folder (train_diffusion's or finetune_disc's out) in eval mode.

    ``bank_factory(config_dict) -> nn.Module`` builds the Emotion Bank (default: models.emotion_bank).
    """
    from safetensors.torch import load_file

    from talk.models.denoiser import DenoiserSpec, TalkDenoiser

    path = Path(path)
    config = read_config(path)
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise TalkError(f"{weights} not found")
    if bank_factory is None:
        from talk.core.params import parse
        from talk.models.emotion_bank import EmotionBank, EmotionBankConfig

        def bank_factory(d):
            return EmotionBank(parse(EmotionBankConfig, d, "config.json emotion_bank"))

    model = TalkDenoiser(DenoiserSpec.from_dict(config["spec"]), bank_factory(config["emotion_bank"]))
    model.load_state_dict(load_file(str(weights)), strict=True)
    return model.to(device).eval()


def load_discriminator(path: Path | str, device: Any = "cpu") -> EmotionDiscriminator:
    """The discriminator saved beside a fine-tuned denoiser."""
    from safetensors.torch import load_file

    from talk.artifacts.denoiser import read_config
    from talk.core.params import parse
    from talk.models.discriminator import EmotionDiscriminator

    path = Path(path)
    config = read_config(path)
    if "discriminator" not in config or not (path / "discriminator.safetensors").is_file():
        raise TalkError(f"{path} holds no discriminator (run talk finetune-disc)")
    d = config["discriminator"]
    disc = EmotionDiscriminator(parse(DiscriminatorConfig, d["config"], "config.json discriminator"), d["in_channels"])
    disc.load_state_dict(load_file(str(path / "discriminator.safetensors")), strict=True)
    return disc.to(device).eval()
