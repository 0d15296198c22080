"""What the web page does, without the page: check one render's inputs, show the face the model
will see, render with the one ``TalkPipeline`` of the server, keep the files in one temporary
folder.

Every error a user can cause (no face, an unreadable or too long audio file, an unknown emotion,
a bad blend, missing artefacts) is a ``TalkError`` whose one line the page shows; upload paths in
it are cut to the file's name. Anything else is a bug and keeps its traceback in the server log.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from talk.core.errors import TalkError
from talk.media import io as media
from talk.models.emotions import EMOTIONS

NO_STYLE = "none"  # the style choice that conditions on no style


@dataclasses.dataclass(frozen=True)
class Request:
    """One render asked for on the page (defaults: ``Service.defaults``)."""

    image: Path
    audio: Path
    emotion_mode: str = "label"  # label | blend | reference
    emotion: str = "neutral"
    intensity: float = 1.0
    blend: tuple[tuple[str, float], ...] = ()  # (emotion, weight) of the blend (zero weights are dropped)
    emotion_from: Path | None = None  # reference clip for the emotion (emotion_mode reference)
    style: str = NO_STYLE  # a style/<speaker> preset of the prior, or none
    style_from: Path | None = None  # reference clip for the style (over ``style``)
    guidance_ref: float | None = None
    guidance_audio: float | None = None
    guidance_emotion: float | None = None
    guidance_style: float | None = None
    steps: int | None = None
    seed: int | None = None
    paste_back: bool = False


@dataclasses.dataclass(frozen=True)
class Preview:
    crop: np.ndarray  # (S, S, 3) uint8: the aligned face the model sees
    faces: int  # faces detected in the picture (the largest is used)
    note: str  # one line for the page


def short(message: str, paths: list[Path | None]) -> str:
    """``message`` with the upload paths in it cut to the files' names."""
    for p in paths:
        if p is not None:
            message = message.replace(str(p), p.name)
    return message


class Service:
    """The server's state: params, the pipeline (loaded once, on first success), the work folder."""

    def __init__(self, params, workdir: Path, pipeline=None):
        self.params = params
        self.cfg = params.serve
        self.workdir = Path(workdir)
        self.renders = self.workdir / "renders"
        self.renders.mkdir(parents=True, exist_ok=True)
        self._pipe = pipeline
        self._load_lock = threading.Lock()
        self._face_lock = threading.Lock()
        self._preview_aligner = None
        self.load_seconds: float | None = None

    # -- the pipeline

    def pipeline(self):
        """The ``TalkPipeline`` (``params.paths`` + ``render``), loaded on the first call that finds the
        artefacts; a missing one is the pipeline's TalkError naming the stage that makes it, and the
        next call tries again (so training while the server runs needs no restart)."""
        if self._pipe is None:
            with self._load_lock:
                if self._pipe is None:
                    from talk.inference.pipeline import TalkPipeline

                    t0 = time.perf_counter()
                    self._pipe = TalkPipeline.from_params(self.params)
                    self.load_seconds = time.perf_counter() - t0
        return self._pipe

    def try_load(self) -> str | None:
        """Load the pipeline now; the one-line reason when it cannot be (shown on the page)."""
        try:
            self.pipeline()
        except TalkError as e:
            return str(e)
        return None

    def defaults(self) -> dict[str, Any]:
        """The page's starting values: the pipeline's render settings (the denoiser's inference.json
        under ``render.sampling``, the ``render`` loop), or params.yaml's when it is not loaded."""
        from talk.inference.config import Settings, loop_of
        from talk.inference.settings import SamplingConfig

        if self._pipe is not None:
            settings = self._pipe.settings
        else:
            r = self.params.render
            settings = Settings(SamplingConfig().override(r.sampling), loop_of(r))
        s, loop = settings.sampling, settings.loop
        return {"emotion": self.cfg.emotion, "intensity": loop.intensity, "steps": s.steps, "seed": loop.seed,
                "paste_back": loop.paste_back, "guidance_ref": s.guidance_ref, "guidance_audio": s.guidance_audio,
                "guidance_emotion": s.guidance_emotion, "guidance_style": s.guidance_style}

    def styles(self) -> list[str]:
        """Style choices: none, and the prior's style/<speaker> presets when the denoiser takes a style."""
        pipe = self._pipe
        if pipe is None or not pipe.has_style:
            return [NO_STYLE]
        return [NO_STYLE, *sorted(k for k in pipe.prior.presets if k.startswith("style/"))]

    @property
    def has_style(self) -> bool:
        return self._pipe is not None and self._pipe.has_style

    def identities(self) -> dict[str, Path]:
        """The sample identities: ``label -> portrait`` for the speakers of ``sample_data.identities``
        in ``<paths.sources>/MANIFEST.tsv`` (the faces the embedded profile trains on)."""
        from talk.synthesis.sources import read_sources

        try:
            sources = read_sources(self.params.paths.sources)
        except TalkError:
            return {}
        wanted = tuple(self.params.sample_data.identities)
        out = {}
        for src in sources:
            if src.kind == "portrait" and (not wanted or src.speaker in wanted):
                out[f"{src.speaker} ({src.file.name})"] = src.file
        return out

    # -- checks

    def check_audio(self, audio: Path | None, what: str = "speech") -> media.MediaInfo:
        if audio is None:
            raise TalkError(f"no {what}: upload or record an audio file")
        info = media.probe(audio)  # unreadable / not media -> TalkError
        if not info.has_audio:
            raise TalkError(f"{audio}: no audio stream")
        return info

    def check(self, req: Request) -> dict[str, Any]:
        """The keyword arguments of ``render_to_file`` for ``req``, every input checked first (one
        TalkError line each), before any model runs."""
        from talk.inference.emotion import check_emotion

        if req.image is None:
            raise TalkError("no portrait: upload a picture or pick a sample identity")
        info = self.check_audio(req.audio)
        if info.duration > self.cfg.max_seconds:
            raise TalkError(f"the speech is {info.duration:.1f} s long; this server renders at most "
                            f"{self.cfg.max_seconds:g} s (serve.max_seconds)")
        if not 0.0 <= req.intensity <= 1.0:
            raise TalkError(f"intensity must be in [0, 1], got {req.intensity}")
        job: dict[str, Any] = {"intensity": float(req.intensity), "paste_back": bool(req.paste_back)}
        if req.emotion_mode == "label":
            job["emotion"] = check_emotion(req.emotion)
        elif req.emotion_mode == "blend":
            weights = [(check_emotion(e), float(w)) for e, w in req.blend if w]
            if any(not np.isfinite(w) or w < 0 for _, w in weights):
                raise TalkError("blend weights must be non-negative numbers")
            if len(weights) < 1 or sum(w for _, w in weights) <= 0:
                raise TalkError("a blend needs a weight above 0 for at least one emotion")
            total = sum(w for _, w in weights)
            job["blend"] = [(e, w / total) for e, w in weights] if total > 1 else weights
        elif req.emotion_mode == "reference":
            if req.emotion_from is None:
                raise TalkError("emotion from a reference clip: upload the clip")
            self.check_audio_or_video(req.emotion_from, "emotion reference")
            job["emotion_from"] = req.emotion_from
        else:
            raise TalkError(f"unknown emotion mode '{req.emotion_mode}' (label, blend, reference)")
        if req.style_from is not None:
            self.check_audio_or_video(req.style_from, "style reference")
            job["style_from"] = req.style_from
        elif req.style and req.style != NO_STYLE:
            if req.style not in self.styles():
                raise TalkError(f"unknown style '{req.style}' (have: {', '.join(self.styles())})")
            job["style_from"] = req.style
        for key in ("guidance_ref", "guidance_audio", "guidance_emotion", "guidance_style", "steps", "seed"):
            value = getattr(req, key)
            if value is not None:
                job[key] = int(value) if key in ("steps", "seed") else float(value)
        if "style_from" not in job:
            job.pop("guidance_style", None)
        return job

    def check_audio_or_video(self, path: Path, what: str) -> None:
        if path.suffix.lower() == ".npz":
            return  # a `talk embed` file: read by the pipeline
        info = media.probe(path)
        if not (info.has_audio or info.has_video):
            raise TalkError(f"{what} {path}: no audio or video stream")

    # -- the page's actions

    def _aligner(self):
        """A face aligner of the pipeline's settings for previews (its own: renders keep theirs)."""
        if self._preview_aligner is None:
            from talk.media.faces import Aligner

            pipe = self.pipeline()
            self._preview_aligner = Aligner(pipe.aligner.cfg, pipe.image_size)
        return self._preview_aligner

    def preview(self, image: Path) -> Preview:
        """Detect, crop and align the portrait as the render will: the crop and a one-line note."""
        from talk.inference.frames import load_image

        try:
            picture = load_image(image)
            with self._face_lock:
                aligner = self._aligner()
                faces = len(aligner.tracker.detect(np.ascontiguousarray(picture)))
                crop, _, _ = aligner.align_image(picture)
        except TalkError as e:
            raise TalkError(short(str(e), [image])) from None
        note = ("one face found: this crop is what the model sees" if faces == 1 else
                f"{faces} faces found: the largest is used (this crop)")
        return Preview(crop=crop, faces=faces, note=note)

    def render(self, req: Request, advance=None) -> dict[str, Any]:
        """Render ``req`` to an mp4 in the work folder: ``render_to_file``'s summary (out, frames,
        seconds, wall_s, fps). ``advance(done, total)`` after every decoded batch of frames."""
        uploads = [req.image, req.audio, req.emotion_from, req.style_from]
        try:
            job = self.check(req)
            pipe = self.pipeline()
            name = job.get("emotion") or ("blend" if "blend" in job else "reference")
            out = self.renders / f"talk-{name}-{time.strftime('%H%M%S')}-{uuid.uuid4().hex[:6]}.mp4"
            return pipe.render_to_file(out, req.image, req.audio, show_progress=False, advance=advance, **job)
        except TalkError as e:
            raise TalkError(short(str(e), uploads)) from None


def blend_of(weights: dict[str, float]) -> tuple[tuple[str, float], ...]:
    """The blend of the page's sliders (emotion -> weight), in EMOTIONS order."""
    return tuple((e, float(weights[e])) for e in EMOTIONS if e in weights)
