"""`talk render`: a portrait + speech + emotion -> talking-portrait mp4; without inputs, the demo set.

    talk render --image FACE --audio SPEECH --emotion happy --out out.mp4
    talk render --image FACE --audio SPEECH --blend happy:0.6,surprised:0.4 --intensity 0.8 --out mix.mp4
    talk render --image FACE --audio SPEECH --emotion-from angry_clip.mp4 --paste-back --out ref.mp4
    talk render --batch jobs.csv          # columns image,audio,emotion,intensity,out[,...]
    talk render                           # the DVC stage: every render.emotions for the demo inputs
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from talk.cli.common import DEFAULT_PARAMS, DryRunOpt, ParamsOpt, SetOpt, load, print_config, user_errors
from talk.core import runtime
from talk.core.errors import TalkError
from talk.core.fs import check_output

SECTIONS = ("base", "paths", "render")  # what the render reads (the model settings come with the denoiser)


def _opt(*names: str, help: str, **kw):
    return typer.Option(*names, help=help, **kw)


def render(
    image: Annotated[Path | None, _opt("--image", help="portrait (any image; the face is detected, cropped and aligned).")] = None,
    audio: Annotated[Path | None, _opt("--audio", help="speech (any audio or video file PyAV reads; any length).")] = None,
    out: Annotated[Path | None, _opt("--out", help="output .mp4 (H.264 + AAC, 25 fps).")] = None,
    emotion: Annotated[str, _opt("--emotion", help="neutral, angry, contempt, disgusted, fear, happy, sad or surprised.")] = "neutral",
    intensity: Annotated[float | None, _opt("--intensity", help="emotion strength 0..1 (0 = neutral). Default: render.intensity.")] = None,
    level: Annotated[int | None, _opt("--level", help="use the MEAD intensity-level preset 1..3 of the emotion (intensity then scales it).")] = None,
    blend: Annotated[str | None, _opt("--blend", help="mix of presets, e.g. happy:0.6,surprised:0.4 (rest neutral).")] = None,
    emotion_from: Annotated[Path | None, _opt("--emotion-from", help="take the emotion from a reference video / audio clip (or a `talk embed` .npz).")] = None,
    style_from: Annotated[str | None, _opt("--style-from", help="SVP speaking style from a clip, a `talk embed` .npz, or a style/<speaker> preset.")] = None,
    guidance_ref: Annotated[float | None, _opt("--guidance-ref", help="reference-image guidance scale.")] = None,
    guidance_audio: Annotated[float | None, _opt("--guidance-audio", help="audio (lip-sync) guidance scale.")] = None,
    guidance_emotion: Annotated[float | None, _opt("--guidance-emotion", help="emotion guidance scale.")] = None,
    guidance_style: Annotated[float | None, _opt("--guidance-style", help="style guidance scale (with --style-from).")] = None,
    steps: Annotated[int | None, _opt("--steps", help="sampler steps (default: the denoiser's inference.json, render.sampling).")] = None,
    sampler: Annotated[str | None, _opt("--sampler", help="euler | euler_ancestral | heun | dpmpp_2m (all but euler need --schedule window with the frame backbone).")] = None,
    schedule: Annotated[str | None, _opt("--schedule", help="rolling (diagonal denoising, Euler) | window (`--window` frames in parallel, any sampler). Default: render.schedule.")] = None,
    seed: Annotated[int | None, _opt("--seed", help="sampling seed.")] = None,
    window: Annotated[int | None, _opt("--window", help="frames denoised in parallel per window.")] = None,
    no_crop: Annotated[bool, _opt("--no-crop", help="the image is an aligned face crop already: no detection.")] = False,
    paste_back: Annotated[bool, _opt("--paste-back", help="paste the generated face back into the full picture.")] = False,
    batch: Annotated[Path | None, _opt("--batch", help="CSV of jobs: image,audio,emotion,intensity,out[,blend,emotion_from,style_from,seed,...].")] = None,
    params_file: ParamsOpt = DEFAULT_PARAMS,
    sets: SetOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Render a talking-portrait video (DICE-Talk / SVP inference); with no inputs, the demo set of the `render` stage."""
    sampling = {  # over the denoiser's inference.json (render.sampling)
        "steps": steps, "sampler": sampler, "guidance_ref": guidance_ref, "guidance_audio": guidance_audio,
        "guidance_emotion": guidance_emotion, "guidance_style": guidance_style,
    }
    loop = {"seed": seed, "window": window, "schedule": schedule, "intensity": intensity, "crop": False if no_crop else None,
            "paste_back": True if paste_back else None}
    assignments = [f"render.sampling.{k}={v}" for k, v in sampling.items() if v is not None]
    assignments += [f"render.{k}={v}" for k, v in loop.items() if v is not None]
    params = load(params_file, [*(sets or ()), *assignments])  # typed checks of every option (ranges, sampler names)
    if dry_run:
        print_config(params, SECTIONS)
        return
    with user_errors():
        runtime.setup(params.base)
        from talk.inference import batch as batch_jobs
        from talk.inference import pipeline
        from talk.stages import render as stage

        _check_schedule(params)
        if image is None and audio is None and batch is None:
            stage.run(params)
            return
        if batch is not None:
            if image is not None or audio is not None:
                raise TalkError("--batch takes its inputs from the CSV: leave out --image / --audio")
            jobs = batch_jobs.read_batch(batch)  # checked (outputs too) before any model is loaded
            pipe = pipeline.TalkPipeline.from_params(params)
            results = batch_jobs.render_batch(pipe, jobs)
            _summary(results)
            return
        if image is None or audio is None:
            raise TalkError("give both --image and --audio (or --batch CSV, or neither for the demo set)")
        if out is None:
            raise TalkError("--out is required (an .mp4 path)")
        check_output(out, (".mp4",))  # a folder, a wrong suffix, an unwritable place: now, not after the render
        job = _job(image, audio, emotion, level, blend, emotion_from, style_from, params)
        pipe = pipeline.TalkPipeline.from_params(params)
        _summary([pipe.render_to_file(out, image, audio, **job)])


def _check_schedule(params) -> None:
    """A sampler other than Euler on the rolling schedule (frame backbone) fails in the sampling
    loop; say so before any model loads."""
    from talk.artifacts.denoiser import read_spec
    from talk.inference import settings

    r = params.render
    if r.schedule != "rolling":
        return
    denoiser = getattr(params.paths, r.denoiser, None)
    try:  # the sampler given, else the denoiser's own; the backbone is in its config.json (a damaged
        # file is reported when it loads)
        given = r.sampling.get("sampler")
        sampler = given or settings.read(denoiser).sampling.sampler
        if sampler == "euler":
            return
        backbone = read_spec(denoiser).denoiser.backbone
    except (TalkError, TypeError):
        return
    if backbone != "clip":
        what = f"--sampler {sampler}" if given else f"the denoiser's sampler {sampler} ({denoiser}/inference.json)"
        raise TalkError(f"{what} needs --schedule window (render.schedule: window): the rolling schedule steps "
                        f"every frame with Euler")


def _job(image: Path, audio: Path, emotion: str, level, blend, emotion_from, style_from, params) -> dict:
    """Check the inputs before loading any model (fast one-line errors)."""
    from talk.inference import emotion as emotions
    from talk.media import io as media

    if not image.is_file():
        raise TalkError(f"image not found: {image}")
    info = media.probe(audio)  # unreadable / not media -> TalkError
    if not info.has_audio:
        raise TalkError(f"{audio}: no audio stream")
    media.decoded_duration(audio, "audio").report(strict=True)  # corrupt or truncated speech: an error now
    job: dict = {"emotion": emotions.check_emotion(emotion)}
    given = [name for name, v in (("--emotion", emotion if emotion != "neutral" else None), ("--blend", blend),
                                  ("--emotion-from", emotion_from)) if v is not None]
    if len(given) > 1:
        raise TalkError(f"{' and '.join(given)} each set the emotion: give one of them")
    if level is not None:
        if not 1 <= level <= 3:
            raise TalkError(f"--level must be 1, 2 or 3, got {level}")
        if blend is not None or emotion_from is not None:
            raise TalkError("--level picks a preset of --emotion: it does not go with --blend or --emotion-from")
        job["level"] = level
    if blend is not None:
        job["blend"] = emotions.parse_blend(blend)  # '' is an error, not neutral
    if emotion_from is not None:
        if not emotion_from.is_file():
            raise TalkError(f"reference clip not found: {emotion_from}")
        job["emotion_from"] = emotion_from
    if style_from is not None:
        if not Path(style_from).is_file():
            _check_style_preset(style_from, Path(params.paths.prior) / "presets.safetensors")
        job["style_from"] = style_from
    return job


def _check_style_preset(name: str, presets_file: Path) -> None:
    """``--style-from`` that is no file must be one of the prior's style/<speaker> presets."""
    from talk.artifacts.prior import load_presets

    have = sorted(k for k in load_presets(presets_file) if k.startswith("style/")) if presets_file.is_file() else []
    if name in have:
        return
    listed = ", ".join(have) if have else f"none in {presets_file}"
    raise TalkError(f"--style-from {name}: no such file or style preset (presets: {listed})")


def _summary(results: list[dict]) -> None:
    from rich.table import Table

    table = Table(title="talk render")
    for col in ("output", "frames", "video s", "wall s", "frames/s"):
        table.add_column(col, justify="left" if col == "output" else "right")
    for r in results:
        table.add_row(r["out"], str(r["frames"]), f"{r['seconds']:.2f}", f"{r['wall_s']:.1f}", f"{r['fps']:.1f}")
    runtime.console.print(table)
