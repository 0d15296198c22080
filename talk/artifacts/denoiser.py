"""The denoiser artefact (train_diffusion's and finetune_disc's output): config.json (format,
version, the DenoiserSpec, the Emotion Bank config and the objective it was trained with),
model.safetensors, scheduler_config.json, inference.json (talk/inference/settings.py) and, after
finetune_disc, discriminator.safetensors; building, saving and loading them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from talk.artifacts.files import load_safetensors, load_state, parse_saved, read_json, save_safetensors
from talk.artifacts.files import read_config as _read_config
from talk.core.errors import TalkError
from talk.core.params import to_plain
from talk.models.denoiser_config import DiscriminatorConfig
from talk.models.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from talk.models.denoiser import DenoiserSpec, TalkDenoiser
    from talk.models.discriminator import EmotionDiscriminator


FORMAT = "talk-denoiser"
VERSION = 1
DISCRIMINATOR = "discriminator.safetensors"
SCHEDULE_KEYS = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type")


def producer(path: Path | str) -> str:
    """The command that rebuilds a denoiser folder: finetune-disc when it holds a discriminator."""
    return "finetune-disc" if (Path(path) / DISCRIMINATOR).is_file() else "train-diffusion"


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


def bank_config(bank) -> dict:
    cfg = getattr(bank, "cfg", None)
    if not dataclasses.is_dataclass(cfg):
        raise TypeError("the Emotion Bank must carry its dataclass config as .cfg")
    return to_plain(cfg)


def save_denoiser(model: TalkDenoiser, folder: Path, extra: dict | None = None) -> None:
    """config.json + model.safetensors + scheduler_config.json into ``folder`` (already a temp dir).

    ``extra`` adds top-level config entries: ``trained`` (stage, steps, seed), ``objective`` (the
    training objective, which finetune_disc continues with), ``discriminator``."""
    from talk.artifacts.files import public_mode
    from talk.models.diffusion import make_scheduler

    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "format": FORMAT,
        "version": VERSION,
        "spec": model.spec.to_dict(),
        "emotion_bank": bank_config(model.emotion_bank),
        **(extra or {}),
    }
    (folder / "config.json").write_text(json.dumps(to_plain(config), indent=2) + "\n")
    save_safetensors(folder / "model.safetensors", model.state_dict(), {"format": FORMAT, "version": str(VERSION)})
    make_scheduler(model.spec.diffusion).save_config(str(folder))
    public_mode(folder / "scheduler_config.json")


def save_discriminator(disc: EmotionDiscriminator, folder: Path) -> None:
    save_safetensors(folder / DISCRIMINATOR, disc.state_dict())


def read_config(path: Path) -> dict:
    """A denoiser folder's config.json, checked for its format and version."""
    return _read_config(path, FORMAT, VERSION, producer(path))


def read_spec(path: Path | str, config: dict | None = None) -> DenoiserSpec:
    """The saved DenoiserSpec, strictly (a missing or unknown key is an error, never a default)."""
    from talk.models.denoiser import DenoiserSpec

    path = Path(path)
    config = read_config(path) if config is None else config
    try:
        return DenoiserSpec.from_dict(config.get("spec"))
    except (ConfigError, TypeError) as e:
        raise TalkError(f"{path / 'config.json'}: {e}; rebuild it with `talk {producer(path)}`") from None


def read_objective(path: Path | str, cls: type) -> Any:
    """The training objective saved with a denoiser (``cls``: its config dataclass)."""
    path = Path(path)
    config = read_config(path)
    if "objective" not in config:
        raise TalkError(f"{path / 'config.json'} has no saved training objective (written by an older talk); "
                        f"re-run `talk train-diffusion`")
    return parse_saved(cls, config["objective"], path / "config.json", "objective", producer(path))


def _check_scheduler(path: Path, spec: DenoiserSpec, stage: str) -> None:
    """scheduler_config.json must be readable and describe the spec's noise schedule."""
    from talk.models.diffusion import make_scheduler

    file = path / "scheduler_config.json"
    if not file.is_file():
        return  # optional: the schedule itself is rebuilt from the spec
    saved = read_json(file, stage)
    scheduler = make_scheduler(spec.diffusion)
    want = {**scheduler.config, "_class_name": type(scheduler).__name__}
    bad = [k for k in (*SCHEDULE_KEYS, "_class_name") if saved.get(k) != want[k]]
    if bad:
        raise TalkError(f"{file}: {bad[0]}={saved.get(bad[0])!r} does not match {path / 'config.json'} "
                        f"({want[bad[0]]!r}); rebuild it with `talk {stage}`")


def load_denoiser(path: Path | str, device: Any = "cpu", bank_factory=None) -> TalkDenoiser:
    """Rebuild a denoiser folder (train_diffusion's or finetune_disc's out) in eval mode.

    ``bank_factory(config_dict) -> nn.Module`` builds the Emotion Bank (default: models.emotion_bank).
    """
    from talk.models.denoiser import TalkDenoiser

    path = Path(path)
    stage = producer(path)
    config = read_config(path)
    spec = read_spec(path, config)
    _check_scheduler(path, spec, stage)
    state = load_safetensors(path / "model.safetensors", stage)
    if bank_factory is None:
        from talk.models.emotion_bank import EmotionBank, EmotionBankConfig

        def bank_factory(d):
            return EmotionBank(parse_saved(EmotionBankConfig, d, path / "config.json", "emotion_bank", stage))

    model = TalkDenoiser(spec, bank_factory(config.get("emotion_bank")))
    load_state(model, state, path / "model.safetensors", stage, path / "config.json")
    return model.to(device).eval()


def load_discriminator(path: Path | str, device: Any = "cpu") -> EmotionDiscriminator:
    """The discriminator saved beside a fine-tuned denoiser."""
    from talk.models.discriminator import EmotionDiscriminator

    path = Path(path)
    config = read_config(path)
    if "discriminator" not in config or not (path / DISCRIMINATOR).is_file():
        raise TalkError(f"{path} holds no discriminator (run talk finetune-disc)")
    d = config["discriminator"]
    cfg_file = path / "config.json"
    if not isinstance(d, dict) or not isinstance(d.get("in_channels"), int):
        raise TalkError(f"{cfg_file}: discriminator entry without in_channels; rebuild it with `talk finetune-disc`")
    disc_cfg = parse_saved(DiscriminatorConfig, d.get("config"), cfg_file, "discriminator.config", "finetune-disc")
    disc = EmotionDiscriminator(disc_cfg, d["in_channels"])
    load_state(disc, load_safetensors(path / DISCRIMINATOR, "finetune-disc"), path / DISCRIMINATOR, "finetune-disc", cfg_file)
    return disc.to(device).eval()
