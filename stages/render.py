"""Stage ``render``: the demo set, one video per emotion of ``render.emotions`` for the demo portrait
and speech, and a contact sheet (DICE-Talk §3.4 / SVP §3.4 inference: talk/inference/pipeline.py).

The sampling settings are the denoiser's own (``<denoiser>/inference.json``), overridden key by key
by ``render.sampling``; this section holds the render loop and the demo set.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from talk.core.errors import TalkError
from talk.core.params import one_of, rng, to_plain
from talk.inference.config import DENOISERS, RenderLoop
from talk.inference.emotion import check_emotions
from talk.inference.settings import SamplingConfig
from talk.models.emotions import EMOTIONS


@dataclasses.dataclass(frozen=True)
class Config(RenderLoop):
    """The ``render`` section: the render loop (``RenderLoop``), the denoiser, sampling overrides, the demo set."""

    denoiser: str = dataclasses.field(default="finetune_disc", metadata=one_of(*DENOISERS))  # the denoiser rendered with: finetune_disc (paths.finetune_disc) | diffusion (paths.diffusion, before the emotion-discriminator fine-tuning)
    sampling: dict[str, Any] = dataclasses.field(default_factory=dict)  # SamplingConfig keys overriding the denoiser's inference.json (sampler, steps, sigmas, guidance_*), e.g. {guidance_emotion: 3.0}
    demo_image: Path = Path("portraits/dreamtalk__f30.png")  # demo portrait, relative to paths.sources (M001, a sample_data identity)
    demo_audio: Path = Path("speech/sadtalker__RD_Radio31_000__02.wav")  # demo speech, relative to paths.sources
    demo_seconds: float = dataclasses.field(default=2.0, metadata=rng(0.0))  # s of demo speech rendered per emotion (0 = all of it)
    emotions: tuple[str, ...] = EMOTIONS  # emotions of the demo set, one video each
    sheet_frames: int = dataclasses.field(default=6, metadata=rng(1))  # frames per emotion in contact_sheet.png
    sheet_size: int = dataclasses.field(default=128, metadata=rng(16))  # px, side of a contact-sheet cell

    def validate(self) -> None:
        super().validate()
        check_emotions(self.emotions, "render.emotions")
        SamplingConfig().override(self.sampling, "render.sampling")  # unknown keys and bad values: errors now


def run(params) -> dict:
    """Each of ``render.emotions`` for the demo inputs -> ``paths.render`` (mp4s, contact sheet, render.json)."""
    from rich.table import Table

    from talk.core.fs import atomic_dir
    from talk.core.runtime import console, progress
    from talk.inference.frames import FPS, contact_sheet, fit_length, frame_count, load_speech, original_audio
    from talk.inference.pipeline import FpsColumn, TalkPipeline
    from talk.media import io as media

    cfg: Config = params.render
    image, speech = params.paths.sources / cfg.demo_image, params.paths.sources / cfg.demo_audio
    for p, what in ((image, "render.demo_image"), (speech, "render.demo_audio")):
        if not p.is_file():
            raise TalkError(f"{what} not found: {p} (the demo inputs are relative to paths.sources)")
    pipe = TalkPipeline.from_params(params)
    samples = load_speech(speech)[: int(round(cfg.demo_seconds * media.AUDIO_RATE)) or None]  # 0 s: all of it
    n = frame_count(len(samples))
    sound, rate = original_audio(speech)
    sound = fit_length(sound, round(n / FPS * rate))
    prep, feats = pipe.prepare(image), pipe.audio_features(samples, n)
    summary: dict[str, Any] = {"frames_per_video": n, "seconds_per_video": n / FPS, "videos": {}}
    rows: dict[str, np.ndarray] = {}
    table = Table(title=f"render -> {params.paths.render}")
    for col in ("emotion", "frames", "wall s", "frames/s"):
        table.add_column(col, justify="right" if col != "emotion" else "left")
    with atomic_dir(params.paths.render) as tmp, progress(FpsColumn()) as bar:
        task = bar.add_task("render demo", total=n * len(cfg.emotions))
        for emo in cfg.emotions:
            t0 = time.perf_counter()
            rows[emo] = frames = pipe.crop_frames(prep.latent, feats, n, pipe.emotion(emo, cfg.intensity),
                                                  advance=lambda k: bar.advance(task, k))
            media.write_video(tmp / f"{emo}.mp4", frames, fps=FPS, audio=sound, audio_rate=rate, crf=cfg.crf)
            wall = time.perf_counter() - t0
            summary["videos"][emo] = {"file": f"{emo}.mp4", "frames": len(frames), "wall_s": round(wall, 3),
                                      "fps": round(len(frames) / wall, 2)}
            table.add_row(emo, str(len(frames)), f"{wall:.1f}", f"{len(frames) / wall:.1f}")
        media.write_image(tmp / "contact_sheet.png", contact_sheet(rows, cfg.sheet_frames, cfg.sheet_size))
        media.write_image(tmp / "reference_crop.png", prep.crop)
        sampling = pipe.settings.sampling
        summary.update({"demo_image": str(image), "demo_audio": str(speech), "denoiser": str(getattr(params.paths, cfg.denoiser)),
                        "steps": sampling.steps, "sampler": sampling.sampler, "sampling": to_plain(sampling)})
        (tmp / "render.json").write_text(json.dumps(summary, indent=2) + "\n")
        params.write_resolved(tmp / "params.yaml", ["base", "paths", "render"])
    console.print(table)
    return summary
