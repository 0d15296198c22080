"""Stage ``render`` and ``TalkPipeline``: portrait + speech + emotion -> talking-portrait video.

DICE-Talk §3.4 / SVP §3.4 inference, assembled from the trained artefacts:

1. the portrait is detected, cropped and aligned exactly as the training crops
   (``stages.faces.Aligner``, the ``crop_align.face`` settings), and VAE-encoded: the
   *reference latent* (identity, channel-concatenated into every denoiser input);
2. the speech is encoded by the same Whisper as ``audio_features`` (50 Hz, every layer); each video
   frame gets the k Whisper frames centred on it;
3. the emotion is a Gaussian from the prior's presets (``--emotion``; ``--intensity`` moves its mean
   from the neutral preset towards the emotion's level presets; ``--blend`` mixes presets), or the
   embedding of a reference clip (``--emotion-from``); the style (SVP) likewise (``--style-from``);
4. frames are generated with the motion context the denoiser was trained with (talk/data/windows.py:
   target frame t sees the M frames t-M .. t-1). Default ``schedule: rolling`` (diagonal
   denoising, FIFO-Diffusion, Kim et al. 2024): a queue of ``steps`` consecutive frames at
   decreasing noise levels moves one Euler step per iteration in ONE batched forward, a finished
   frame leaves, a new one enters; each frame's motion frames are the final latents of its
   predecessors, or their current denoised estimates while still in the queue. ``schedule:
   window`` denoises ``window`` frames in parallel (the frame backbone folds them into the batch;
   the clip backbone always, over its F frames), all conditioned on the M frames before the
   window; consecutive windows may overlap (latents cross-faded). Either way the motion context is
   *re-anchored* to the reference before use: its per-channel latent mean is reset to the
   reference's (colour / brightness) and it is blended a little towards the reference latent
   (identity), so errors cannot accumulate over long audio;
5. each sampler step evaluates every guidance branch (nothing / ref / ref+audio / ref+audio+emotion
   [/ +style]) in ONE batched forward with separate scales (``models.sampling.GuidedDenoiser``);
   branches with zero weight are skipped, and only the steps of the guidance interval
   (``guidance_from`` .. ``guidance_to``) are guided, the others run the single all-conditions
   branch (Kynkäänniemi et al. 2024, "Applying guidance in a limited interval");
6. latents are decoded by the VAE in chunks, optionally pasted back into the full picture (inverse
   crop transform, feathered mask), and streamed into an H.264 + AAC mp4 with the original audio.

``TalkPipeline`` is usable without the CLI::

    pipe = TalkPipeline.from_pretrained("artifacts")        # or TalkPipeline.from_params(params)
    frames = pipe("face.jpg", "speech.wav", emotion="happy", intensity=0.7)   # (T, H, W, 3) uint8
    pipe.render_to_file("out.mp4", "face.jpg", "speech.wav", emotion="happy")

Default-profile speed choices (CPU, ``params.yaml`` ``render``; measured by benchmarks/render.py):
5 Euler steps (= DDIM, η = 0) on Karras noise levels; the rolling schedule batches every queued
frame and every guidance branch into one forward per iteration (one row per frame per step, as
many rows as steps); a reference scale of 1 drops the unconditional branch; guidance on the middle
3 of 5 steps only (3 branches there, 1 elsewhere: 11 rows per frame instead of 15); one noise tensor
shared by every frame (steadier video); VAE decoding in batches of ``decode_batch``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from talk.core.errors import TalkError
from talk.core.fs import atomic_path
from talk.core.runtime import console
from talk.inference.frames import FPS, fit_length, frame_count, load_speech, original_audio
from talk.inference.pipeline import Config, FpsColumn, TalkPipeline
from talk.media import io as media

# --------------------------------------------------------------------------------------------
# Emotion conditioning (DICE-Talk §3.1-3.2: a Gaussian per emotion; the mean conditions the bank)


# --------------------------------------------------------------------------------------------
# Audio, frames, geometry


# --------------------------------------------------------------------------------------------
# Artefacts


# --------------------------------------------------------------------------------------------
# The pipeline


# --------------------------------------------------------------------------------------------
# Batch jobs and the stage


def contact_sheet(rows: dict[str, np.ndarray], n: int, size: int) -> np.ndarray:
    """One row per emotion: ``n`` evenly spaced frames (size px), the label drawn on the first."""
    import cv2

    sheet = []
    for name, frames in rows.items():
        pick = np.linspace(0, len(frames) - 1, n).round().astype(int)
        cells = [cv2.resize(frames[i], (size, size), interpolation=cv2.INTER_AREA) for i in pick]
        label = np.ascontiguousarray(cells[0])
        cv2.putText(label, name, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(label, name, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        cells[0] = label
        sheet.append(np.concatenate(cells, axis=1))
    return np.concatenate(sheet, axis=0)


def run(params) -> dict:
    """The demo set: each of ``render.emotions`` for the demo portrait and speech -> ``render.out``."""
    import cv2
    from rich.table import Table

    from talk.core.fs import atomic_dir

    cfg: Config = params.render
    for p, what in ((cfg.demo_image, "render.demo_image"), (cfg.demo_audio, "render.demo_audio")):
        if not Path(p).is_file():
            raise TalkError(f"{what} not found: {p} (the sample_data stage's sources carry the demo inputs)")
    pipe = TalkPipeline.from_params(params)
    samples = load_speech(cfg.demo_audio)
    if cfg.demo_seconds > 0:
        samples = samples[: int(round(cfg.demo_seconds * media.AUDIO_RATE))]
    sound, rate = original_audio(Path(cfg.demo_audio))
    prep = pipe.prepare(cfg.demo_image)
    n = frame_count(len(samples))
    sound = fit_length(sound, round(n / FPS * rate))
    feats = pipe.audio_features(samples, n)
    summary = {"frames_per_video": n, "seconds_per_video": n / FPS, "videos": {}}
    rows: dict[str, np.ndarray] = {}
    table = Table(title=f"render -> {cfg.out}")
    for col in ("emotion", "frames", "wall s", "frames/s"):
        table.add_column(col, justify="right" if col != "emotion" else "left")
    from talk.core.runtime import progress

    with atomic_dir(cfg.out) as tmp, progress(FpsColumn()) as bar:
        task = bar.add_task("render demo", total=n * len(cfg.emotions))
        for emo in cfg.emotions:
            t0 = time.perf_counter()
            z = pipe.emotion(emo, cfg.intensity)
            frames = []
            for _, lat in pipe.generate_latents(prep.latent, feats, n, z, None, cfg):
                frames.append(pipe.decode(lat))
                bar.advance(task, len(lat))
            frames = np.concatenate(frames)
            media.write_video(tmp / f"{emo}.mp4", frames, fps=FPS, audio=sound, audio_rate=rate, crf=cfg.crf)
            wall = time.perf_counter() - t0
            rows[emo] = frames
            summary["videos"][emo] = {"file": f"{emo}.mp4", "frames": len(frames), "wall_s": round(wall, 3),
                                      "fps": round(len(frames) / wall, 2)}
            table.add_row(emo, str(len(frames)), f"{wall:.1f}", f"{len(frames) / wall:.1f}")
        sheet = contact_sheet(rows, cfg.sheet_frames, cfg.sheet_size)
        ok, png = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        assert ok
        (tmp / "contact_sheet.png").write_bytes(png.tobytes())
        cv2.imwrite(str(tmp / "reference_crop.png"), cv2.cvtColor(prep.crop, cv2.COLOR_RGB2BGR))
        summary.update({"demo_image": str(cfg.demo_image), "demo_audio": str(cfg.demo_audio),
                        "denoiser": str(cfg.denoiser), "steps": cfg.steps, "sampler": cfg.sampler})
        (tmp / "render.json").write_text(json.dumps(summary, indent=2) + "\n")
        params.write_resolved(tmp / "params.yaml", ["base", "model", "render"])
    console.print(table)
    return summary


def write_png(path: Path, rgb: np.ndarray) -> None:
    import cv2

    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    with atomic_path(path) as tmp:
        tmp.write_bytes(png.tobytes())
