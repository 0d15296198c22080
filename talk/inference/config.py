"""The settings of one render: the render loop's (``params.yaml`` ``render``) and the model's sampling.

``RenderLoop`` is what the pipeline reads from the ``render`` section: how frames are scheduled
(rolling diagonal denoising or windows), re-anchored, seeded, decoded and written. How each frame
is sampled (sampler, steps, noise levels, guidance scales and interval) is the denoiser's own
``SamplingConfig`` (``<denoiser>/inference.json``, talk/inference/settings.py), overridden key by
key by ``render.sampling``. ``Settings`` pairs the two for one call; ``Settings.replace`` routes a
per-call override (``steps=8``, ``window=10``) to the one it belongs to.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from talk.core.errors import TalkError
from talk.core.params import one_of, parse, rng, to_plain
from talk.inference.settings import SamplingConfig

DENOISERS = {"finetune_disc": "finetune_disc", "diffusion": "train_diffusion"}  # render.denoiser: a params.paths entry -> the stage writing it


@dataclasses.dataclass(frozen=True)
class RenderLoop:
    """The render loop's settings (``render`` section keys the pipeline reads; per-call overridable)."""

    intensity: float = dataclasses.field(default=1.0, metadata=rng(0.0, 1.0))  # emotion strength: 0 = neutral preset, 1 = the emotion's strongest (level-3) preset
    schedule: str = dataclasses.field(default="rolling", metadata=one_of("window", "rolling"))  # rolling: diagonal denoising, every frame sees its own M previous frames (as trained) | window: `window` frames in parallel, motion from the previous window
    window: int = dataclasses.field(default=25, metadata=rng(1))  # frames denoised in parallel per window (frame backbone; the clip backbone uses its F)
    overlap: int = dataclasses.field(default=0, metadata=rng(0))  # frames shared by consecutive windows, cross-faded in latent space
    anchor: float = dataclasses.field(default=0.1, metadata=rng(0.0, 1.0))  # blend of the motion context towards the reference latent (identity re-anchoring), 0..1
    anchor_colour: bool = True  # reset the motion context's per-channel latent mean to the reference's (colour re-anchoring)
    shared_noise: bool = True  # one noise tensor for every frame (steadier video); false: per-frame noise seeds
    seed: int = dataclasses.field(default=0, metadata=rng(0))  # sampling seed
    decode_batch: int = dataclasses.field(default=16, metadata=rng(1))  # frames per VAE decode call
    precision: str = dataclasses.field(default="auto", metadata=one_of("auto", "float32", "bfloat16", "float16"))  # denoiser compute: auto (bf16 autocast on CUDA, float32 elsewhere) | float32 | bfloat16 | float16 (CUDA); the sampler's state stays float32
    crop: bool = True  # detect, crop and align the portrait like crop_align (false: it is an aligned crop already)
    paste_back: bool = False  # paste the generated crop back into the full picture
    feather: float = dataclasses.field(default=0.08, metadata=rng(0.0, 0.5))  # paste-back mask edge ramp, fraction of the crop side
    crf: int = dataclasses.field(default=18, metadata=rng(0, 51))  # H.264 constant rate factor of the written mp4

    def validate(self) -> None:
        if self.overlap >= self.window:
            raise TalkError(f"render.overlap ({self.overlap}) must be smaller than render.window ({self.window})")


def compute_dtype(precision: str, device) -> str | None:
    """The autocast dtype name of the denoiser for ``precision`` on ``device`` (None: plain float32)."""
    if precision == "auto":
        return "bfloat16" if str(device).startswith("cuda") else None
    return None if precision == "float32" else precision


LOOP_KEYS = tuple(f.name for f in dataclasses.fields(RenderLoop))
SAMPLING_KEYS = tuple(f.name for f in dataclasses.fields(SamplingConfig))


def loop_of(section: Any) -> RenderLoop:
    """The ``RenderLoop`` part of a ``render`` section (the stage's Config extends RenderLoop)."""
    return RenderLoop(**{k: getattr(section, k) for k in LOOP_KEYS})


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything one render call uses: the denoiser's sampling and the render loop."""

    sampling: SamplingConfig = SamplingConfig()  # sampler, steps, noise levels, guidance (inference.json + render.sampling)
    loop: RenderLoop = RenderLoop()  # schedule, window, anchoring, seed, decoding, crop, writing

    def replace(self, **changes: Any) -> Settings:
        """A copy with per-call overrides, each routed to ``sampling`` or ``loop`` and checked like
        params.yaml (a bad value is a TalkError; an unknown name a TypeError)."""
        if not changes:
            return self
        unknown = sorted(set(changes) - set(LOOP_KEYS) - set(SAMPLING_KEYS))
        if unknown:
            raise TypeError(f"unknown render setting(s) {', '.join(unknown)} (sampling: {', '.join(SAMPLING_KEYS)}; "
                            f"render loop: {', '.join(LOOP_KEYS)})")
        sampling = self.sampling.override({k: v for k, v in changes.items() if k in SAMPLING_KEYS}, "render settings")
        loop_changes = {k: v for k, v in changes.items() if k in LOOP_KEYS}
        loop = parse(RenderLoop, {**to_plain(self.loop), **loop_changes}, "render") if loop_changes else self.loop
        return Settings(sampling, loop)
