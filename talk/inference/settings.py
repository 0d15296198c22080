"""The render-time settings a trained denoiser needs, saved beside its weights as ``inference.json``.

A denoiser is only as good as the way it is sampled and fed: the sampler and guidance it was
checked with (``train_diffusion.sampling``), the Whisper features it was trained on (model and
precision: ``audio_features``) and the face crop of its training data (``crop_align.face``).
train_diffusion writes them with the model, finetune_disc carries them forward, and
``TalkPipeline.from_pretrained`` / ``talk render`` / the render and evaluate stages read them, so a
pipeline loaded from a folder renders as the stages that made it intended. ``render.sampling``
overrides single sampling keys without retraining.

Torch-free: params parsing imports ``SamplingConfig`` on every `talk` command.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from talk.core.errors import TalkError
from talk.core.params import one_of, parse, rng, to_plain

FILE = "inference.json"
FORMAT = "talk-inference"
VERSION = 1
SAMPLERS = ("euler", "euler_ancestral", "heun", "dpmpp_2m")  # talk.models.sampling.SAMPLERS


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How frames are sampled from the denoiser (models/sampling.py): the sampler, its noise levels,
    and one guidance scale per condition over the steps of a guidance interval."""

    sampler: str = dataclasses.field(default="euler", metadata=one_of(*SAMPLERS))  # euler (= DDIM, eta 0) | euler_ancestral | heun | dpmpp_2m
    steps: int = dataclasses.field(default=5, metadata=rng(1))  # sampler steps per frame
    sigmas: str = dataclasses.field(default="karras", metadata=one_of("karras", "uniform"))  # noise-level spacing of the steps
    guidance_ref: float = dataclasses.field(default=1.0, metadata=rng(0.0))  # reference-image guidance scale (1 = no unconditional branch)
    guidance_audio: float = dataclasses.field(default=2.0, metadata=rng(0.0))  # audio (lip-sync) guidance scale
    guidance_emotion: float = dataclasses.field(default=2.25, metadata=rng(0.0))  # emotion guidance scale (separate from audio; DICE-Talk ties the two)
    guidance_style: float = dataclasses.field(default=1.0, metadata=rng(0.0))  # style guidance scale (used when a style is given)
    guidance_from: float = dataclasses.field(default=0.2, metadata=rng(0.0, 1.0))  # guidance interval: steps whose centre lies in [from, to) run every branch
    guidance_to: float = dataclasses.field(default=0.8, metadata=rng(0.0, 1.0))  # end of the guidance interval (fractions of the steps)
    context_aug: float = dataclasses.field(default=0.1, metadata=rng(0.0))  # σ of the noise on the reference + motion latents (the model's own previous frames) of a denoiser trained with objective.context_aug; ignored by others

    def validate(self) -> None:
        if self.guidance_from > self.guidance_to:
            raise TalkError(f"sampling: guidance_from ({self.guidance_from}) is after guidance_to ({self.guidance_to})")

    def guided_steps(self) -> set[int]:
        """Steps that run every guidance branch (``talk.models.sampling.guidance_interval``)."""
        from talk.models.sampling import guidance_interval  # torch: only when sampling

        return guidance_interval(self.steps, self.guidance_from, self.guidance_to)

    def scales(self) -> dict[str, float]:
        return {"ref": self.guidance_ref, "audio": self.guidance_audio, "emotion": self.guidance_emotion,
                "style": self.guidance_style}

    def override(self, changes: Mapping[str, Any], where: str = "render.sampling") -> SamplingConfig:
        """A copy with some keys replaced (checked like params.yaml: unknown keys are errors)."""
        if not changes:
            return self
        return parse(SamplingConfig, {**to_plain(self), **dict(changes)}, where)


def write(folder: Path, sampling: SamplingConfig, audio: Mapping[str, Any], face: Mapping[str, Any],
          image_size: int) -> Path:
    """``<folder>/inference.json`` (folder: a stage's temporary output folder)."""
    data = {"format": FORMAT, "version": VERSION, "sampling": to_plain(sampling), "audio": to_plain(dict(audio)),
            "face": to_plain(dict(face)), "image_size": int(image_size)}
    path = Path(folder) / FILE
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


@dataclasses.dataclass(frozen=True)
class InferenceSettings:
    sampling: SamplingConfig
    audio: dict  # audio_features' settings: whisper, window_s, context_s, pad_windows, batch, precision
    face: dict  # crop_align.face: detector, crop and alignment settings of the training crops
    image_size: int  # px, side of the crops the model was trained on


def read(folder: Path, stage: str = "train-diffusion") -> InferenceSettings:
    """The settings saved with a denoiser; a missing or damaged file is one line naming the stage."""
    path = Path(folder) / FILE
    if not path.is_file():
        raise TalkError(f"{path} not found: the denoiser in {folder} predates saved render settings; re-run `talk {stage}`")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise TalkError(f"{path}: not valid JSON (damaged?); re-run `talk {stage}`") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise TalkError(f"{path}: not a talk inference settings file; re-run `talk {stage}`")
    if int(data.get("version", 0)) > VERSION:
        raise TalkError(f"{path}: format version {data['version']} is newer than this code ({VERSION})")
    try:
        sampling = parse(SamplingConfig, data["sampling"], f"{path} sampling")
        return InferenceSettings(sampling, dict(data["audio"]), dict(data["face"]), int(data["image_size"]))
    except (KeyError, TypeError, ValueError) as e:
        raise TalkError(f"{path}: incomplete or malformed ({type(e).__name__}: {e}); re-run `talk {stage}`") from None
