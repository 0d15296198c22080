"""``TalkPipeline``: portrait + speech + emotion -> talking-portrait frames, from the trained artefacts.

DICE-Talk §3.4 / SVP §3.4 inference:

1. the portrait is detected, cropped and aligned exactly as the training crops (talk/media/faces.py
   ``Aligner`` with the face settings saved in the denoiser's inference.json) and VAE-encoded: the
   *reference latent* (identity, channel-concatenated into every denoiser input);
2. the speech is encoded by the Whisper the denoiser was trained on (50 Hz, every layer, the saved
   chunking and precision); each video frame gets the k Whisper frames centred on it;
3. the emotion is a Gaussian from the prior's presets (``emotion``; ``intensity`` moves its mean from
   the neutral preset towards the emotion's level presets; ``blend`` mixes presets), or the
   embedding of a reference clip (``emotion_from``); the style (SVP) likewise (``style_from``);
4. frames are generated with the motion context the denoiser was trained with, by the rolling or
   the window schedule (talk/inference/schedules.py), each step evaluating every guidance branch in
   ONE batched forward, on the steps of the guidance interval (talk/models/sampling.py);
5. latents are decoded by the VAE in chunks, optionally pasted back into the full picture (inverse
   crop transform, feathered mask), and streamed into an H.264 + AAC mp4 with the original audio.

Usable without the CLI::

    pipe = TalkPipeline.from_pretrained("artifacts")        # or TalkPipeline.from_params(params)
    frames = pipe("face.jpg", "speech.wav", emotion="happy", intensity=0.7)   # (T, H, W, 3) uint8
    pipe.render_to_file("out.mp4", "face.jpg", "speech.wav", emotion="happy", steps=8)

Per-call keyword settings override the sampling (``steps``, ``sampler``, ``guidance_*``, ...) or the
render loop (``schedule``, ``window``, ``seed``, ...): talk/inference/config.py ``Settings``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from talk.core.errors import TalkError
from talk.inference import loading, schedules
from talk.inference.config import DENOISERS, RenderLoop, Settings, compute_dtype, loop_of
from talk.inference.emotion import check_emotion, emotion_gaussian, parse_blend
from talk.inference.frames import (
    FPS,
    even_frames,
    feather_mask,
    fit_length,
    frame_count,
    load_image,
    load_speech,
    original_audio,
    paste_frame,
)
from talk.media import io as media


@dataclasses.dataclass
class Prepared:
    """A portrait ready for rendering."""

    picture: np.ndarray  # (H, W, 3) uint8, the input picture
    crop: np.ndarray  # (S, S, 3) uint8, the aligned crop the model sees
    transform: np.ndarray  # (2, 3) picture px -> crop px (a scaling when the picture was the crop)
    latent: Any  # (C, h, w) reference latent (scaled)


class TalkPipeline:
    """Portrait + speech + emotion -> frames. Build with ``from_pretrained`` / ``from_params``."""

    def __init__(self, *, vae, vae_scale: float, prior, denoiser, schedule, whisper, aligner=None,
                 settings: Settings | None = None, chunking: dict | None = None, device="cpu"):
        import torch

        from talk.models.diffusion import KarrasDenoiser

        self.vae, self.vae_scale = vae, vae_scale
        self.prior, self.denoiser, self.schedule = prior, denoiser, schedule
        self.whisper, self.aligner = whisper, aligner
        self.settings = settings or Settings()
        self.chunking = dict(chunking or {})
        self.device = torch.device(device)
        self.karras = KarrasDenoiser(denoiser, schedule)
        self.spec = denoiser.spec
        loading.check_shapes(self.spec, vae, prior, whisper)

    # -- construction

    @classmethod
    def from_pretrained(cls, source: str | Path | Any = "artifacts", *, whisper: str | None = None, face=None,
                        device: str = "cpu", cache_dir: str | Path | None = None, **settings) -> TalkPipeline:
        """From an artefacts folder (``<dir>/vae``, ``<dir>/prior``, ``<dir>/finetune_disc`` or else
        ``<dir>/diffusion``) with the settings saved in the denoiser's inference.json, or from parsed
        params (``from_params``). ``whisper`` / ``face`` replace the saved ones; ``settings``
        override single sampling or render-loop keys."""
        if hasattr(source, "sections"):
            return cls.from_params(source, device=device, **settings)
        from talk.core.params import Paths

        root = Path(source)
        choice = "finetune_disc"
        if not (root / choice / "config.json").is_file() and (root / "diffusion" / "config.json").is_file():
            choice = "diffusion"
        return cls.load(root / "vae", root / "prior", root / choice, whisper=whisper, face=face, device=device,
                        cache_dir=cache_dir or Paths().cache, overrides=settings, stage=DENOISERS[choice])

    @classmethod
    def from_params(cls, params, device: str | None = None, **settings) -> TalkPipeline:
        """From ``params.paths`` (vae, prior, the ``render.denoiser`` one) and the ``render`` section:
        the denoiser's inference.json, ``render.sampling`` over it, the render loop's keys."""
        from talk.core.runtime import device as pick_device

        r = params.render
        if r.denoiser not in DENOISERS:
            raise TalkError(f"render.denoiser: {r.denoiser!r} is not one of {', '.join(DENOISERS)}")
        paths = params.paths
        return cls.load(paths.vae, paths.prior, getattr(paths, r.denoiser), loop=loop_of(r), sampling=r.sampling,
                        cache_dir=paths.cache, device=str(device or pick_device(params.base.device)), overrides=settings,
                        stage=DENOISERS[r.denoiser])

    @classmethod
    def load(cls, vae: Path, prior: Path, denoiser: Path, *, loop: RenderLoop | None = None, sampling=None,
             whisper: str | None = None, face=None, cache_dir: Path, device="cpu", overrides=None,
             stage: str = "finetune_disc") -> TalkPipeline:
        """Load the three artefacts (a missing one is a TalkError naming its stage; ``stage``: the
        denoiser's) and the Whisper of its inference.json (``whisper``: another one)."""
        import torch

        from talk.audio.whisper_ckpt import load_whisper
        from talk.media.faces import Aligner

        for kind, path in (("vae", vae), ("prior", prior), ("denoiser", denoiser)):
            loading.require(kind, path, stage if kind == "denoiser" else None)  # all three before loading any
        trained = loading.read_trained(denoiser, stage)
        settings = Settings(trained.sampling.override(sampling or {}), loop or RenderLoop()).replace(**(overrides or {}))
        device = torch.device(device)
        models = loading.load_models(vae, prior, denoiser, device, stage)
        audio = load_whisper(whisper or trained.whisper, cache_dir, device=str(device))
        loading.check_image_size(models["denoiser"].spec, models["vae"], trained, denoiser)
        aligner = Aligner(face or trained.face, trained.image_size)
        return cls(**models, whisper=audio, aligner=aligner, settings=settings, chunking=trained.chunking, device=device)

    @property
    def _face(self):
        return self.aligner.cfg if self.aligner is not None else None

    @property
    def image_size(self) -> int:
        from talk.artifacts.vae import vae_factor

        return self.spec.latent_size * vae_factor(self.vae)

    @property
    def has_style(self) -> bool:
        return self.spec.conditioning.style_tokens > 0 and self.spec.style_dim > 0

    # -- inputs

    def prepare(self, image: str | Path | np.ndarray, crop: bool | None = None) -> Prepared:
        """Detect, crop and align the portrait (``crop``), then VAE-encode it."""
        import cv2

        from talk.artifacts.vae import encode_frames

        crop = self.settings.loop.crop if crop is None else crop
        picture = load_image(image)
        S = self.image_size
        if crop:
            if self.aligner is None:
                raise TalkError("this pipeline has no face aligner: pass crop=False with an aligned crop")
            try:
                face, _, M = self.aligner.align_image(picture)
            except TalkError as e:  # "no face found in the image": say which
                if isinstance(image, np.ndarray):
                    raise
                raise TalkError(f"{image}: {e} (a portrait with one visible face, or --no-crop for an aligned crop)") from None
        else:
            face = picture
            if abs(face.shape[0] / face.shape[1] - 1) > 0.02:
                raise TalkError(f"--no-crop needs a square aligned face crop, got {face.shape[1]}x{face.shape[0]}")
            if face.shape[:2] != (S, S):
                face = cv2.resize(face, (S, S), interpolation=cv2.INTER_AREA if face.shape[0] > S else cv2.INTER_CUBIC)
            # picture px -> crop px (a scaling), so paste-back returns the picture's size
            sx, sy = S / picture.shape[1], S / picture.shape[0]
            M = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5]], np.float32)
        mean, _ = encode_frames(self.vae, face[None])  # (1, C, h, w), unscaled posterior mean
        lat = (mean[0] * self.vae_scale).to(self.device)  # (C, h, w)
        return Prepared(picture=picture, crop=face, transform=M, latent=lat)

    def audio_features(self, samples: np.ndarray, n_frames: int):
        """Whisper states (2T, L, D) float16 on the pipeline's device (as audio_features made them);
        windows are cast to float32 when cut (``schedules.audio_windows``)."""
        import torch

        from talk.audio.features import encode_audio

        feats = encode_audio(samples, n_frames, self.whisper, **self.chunking)
        return torch.from_numpy(feats).to(self.device)

    def emotion(self, emotion: str = "neutral", intensity: float = 1.0, blend=None, level: int | None = None,
                emotion_from: str | Path | None = None):
        """The emotion embedding z (E,) that conditions the denoiser (the Gaussian's mean)."""
        from talk.inference.embed import embed_reference

        if isinstance(blend, str):
            blend = parse_blend(blend)
        reference = None
        if emotion_from is not None:
            reference = embed_reference(Path(emotion_from), self.prior, self.whisper, self.prior.model.bank_head,
                                        self.chunking, self._face, self.image_size)
        mean, _ = emotion_gaussian(self.prior.presets, emotion, intensity, blend, level, reference)
        return mean.to(self.device)

    def style(self, style_from: str | Path | None):
        """Style embedding (S,) from a clip / .npz / ``style/<speaker>`` preset, or None."""
        import torch

        from talk.inference.embed import embed_reference

        if style_from is None:
            return None
        if not self.has_style:
            raise TalkError("this denoiser was trained without style conditioning (model.conditioning.style_tokens: 0)")
        key = str(style_from)
        if key.startswith("style/") and key in self.prior.presets:
            return self.prior.presets[key][0].float().to(self.device)
        if not Path(key).is_file():
            have = sorted(k for k in self.prior.presets if k.startswith("style/"))
            raise TalkError(f"--style-from {key}: no such file or style preset (presets: {', '.join(have) or 'none'})")
        if "style" not in self.prior.model.heads:
            raise TalkError("the prior has no style head: --style-from needs a prior trained with model.prior.heads: [.., style]")
        mu, _ = embed_reference(Path(style_from), self.prior, self.whisper, "style", self.chunking, self._face, self.image_size)
        return torch.as_tensor(mu).float().to(self.device)

    # -- sampling

    def guided(self, scales: dict[str, float], style: bool, steps=None):
        """The multi-branch guided denoiser (one batched forward per call; ``steps``: its interval)."""
        from talk.models.sampling import GuidedDenoiser

        order = ("ref", "audio", "emotion") + (("style",) if style else ())
        return GuidedDenoiser(self.karras, {k: v for k, v in scales.items() if k in order}, order, steps)

    def generate_latents(self, ref, feats, n_frames: int, z, style=None, settings: Settings | None = None) -> Iterator[tuple[int, Any]]:
        """Yield (first frame index, latents (n, C, h, w)) as frames become final, in order
        (``schedules.generate_latents``; ref (C, h, w), feats (2T, L, D), z (E,), style (S,) or None)."""
        from talk.models.sampling import get_sigmas

        s = settings or self.settings
        sigmas = get_sigmas(self.schedule, s.sampling.steps, s.sampling.sigmas, device=self.device)
        guided = self.guided(s.sampling.scales(), style is not None, s.sampling.guided_steps())
        dtype = compute_dtype(s.loop.precision, self.device)
        if dtype is not None:
            guided = Autocast(guided, self.device.type, dtype)
        return schedules.generate_latents(guided, self.spec, sigmas, ref, feats, n_frames, z, style, s, self.device)

    def crop_frames(self, ref, feats, n_frames: int, z, style=None, settings: Settings | None = None,
                    advance=None) -> np.ndarray:
        """All frames (n, S, S, 3) uint8 of the aligned crop (``generate_latents`` + ``decode``);
        ``advance(k)`` is called after every k decoded frames (progress bars)."""
        out = []
        for _, lat in self.generate_latents(ref, feats, n_frames, z, style, settings):
            out.append(self.decode(lat))
            if advance is not None:
                advance(len(lat))
        return np.concatenate(out)

    def decode(self, latents) -> np.ndarray:
        """Scaled latents (n, C, h, w) -> RGB uint8 frames (n, S, S, 3), ``decode_batch`` at a time."""
        from talk.artifacts.vae import decode_latents

        return decode_latents(self.vae, latents, chunk=self.settings.loop.decode_batch, scaling_factor=self.vae_scale)

    # -- the whole render

    def iter_frames(self, image, audio, *, emotion: str = "neutral", intensity: float | None = None, blend=None,
                    level: int | None = None, emotion_from=None, style_from=None, crop: bool | None = None,
                    paste_back: bool | None = None, show_progress: bool = True, advance=None,
                    **settings) -> tuple[int, Iterator[np.ndarray], np.ndarray]:
        """(frame count, frame iterator, 16 kHz samples): frames are produced while iterating.
        ``settings`` override sampling / render-loop keys for this call (``Settings.replace``);
        ``advance(done, total)`` is called after every decoded batch (the web page's progress bar)."""
        from talk.core.runtime import progress

        s = self.settings.replace(**settings)
        intensity = s.loop.intensity if intensity is None else float(intensity)
        if not 0.0 <= intensity <= 1.0:
            raise TalkError(f"intensity must be in [0, 1], got {intensity}")
        paste = s.loop.paste_back if paste_back is None else paste_back
        if emotion_from is None and not blend:
            check_emotion(emotion)
        samples = load_speech(audio)
        n = frame_count(len(samples))
        z = self.emotion(emotion, intensity, blend, level, emotion_from)
        sty = self.style(style_from)
        prep = self.prepare(image, crop)
        feats = self.audio_features(samples, n)
        mask = feather_mask(self.image_size, s.loop.feather) if paste else None

        def frames() -> Iterator[np.ndarray]:
            done = 0
            # no terminal bar when hidden: renders in server threads may run side by side (rich: one live display at a time)
            with progress(FpsColumn()) if show_progress else contextlib.nullcontext() as bar:
                task = bar.add_task("render", total=n) if bar is not None else None
                for _, lat in self.generate_latents(prep.latent, feats, n, z, sty, s):
                    for f in self.decode(lat):
                        yield paste_frame(f, prep.picture, prep.transform, mask) if paste else f
                    if bar is not None:
                        bar.advance(task, len(lat))
                    done += len(lat)
                    if advance is not None:
                        advance(done, n)

        return n, frames(), samples

    def __call__(self, image, audio, emotion: str = "neutral", intensity: float | None = None, **kw) -> np.ndarray:
        """Render: frames (T, H, W, 3) uint8 at 25 fps, T = the audio's length in frames."""
        n, frames, _ = self.iter_frames(image, audio, emotion=emotion, intensity=intensity, **kw)
        out = np.stack(list(frames))
        assert len(out) == n, (len(out), n)
        return out

    def render_to_file(self, out: str | Path, image, audio, **kw) -> dict:
        """Render and write an H.264 + AAC mp4 (25 fps) with the original audio. Returns a summary."""
        out = Path(out)
        if out.suffix.lower() != ".mp4":
            raise TalkError(f"output must be an .mp4 file, got {out}")
        t0 = time.perf_counter()
        n, frames, samples = self.iter_frames(image, audio, **kw)
        sound, rate = samples, media.AUDIO_RATE
        if not isinstance(audio, np.ndarray):
            sound, rate = original_audio(Path(audio))
        sound = fit_length(sound, round(n / FPS * rate))
        written = media.write_video(out, even_frames(frames), fps=FPS, audio=sound, audio_rate=rate,
                                   crf=self.settings.loop.crf, audio_within_video=True)
        wall = time.perf_counter() - t0
        return {"out": str(out), "frames": written, "seconds": n / FPS, "wall_s": wall, "fps": written / wall if wall else 0.0}

    def evaluation_renderer(self, **settings):
        """``render_fn(ref_frame, audio, emotion, level) -> (T, S, S, 3)`` for evaluate (aligned crops in)."""

        def render_fn(ref_frame: np.ndarray, audio: np.ndarray, emotion: str, level: int) -> np.ndarray:
            emo = emotion if emotion else "neutral"
            lvl = int(level) if level and emo != "neutral" else None
            return self(ref_frame, audio, emotion=emo, intensity=1.0, level=lvl, crop=False, show_progress=False, **settings)

        return render_fn


def evaluation_renderer(params, **settings):
    """evaluate's ``render_fn(ref_frame, audio, emotion, level)`` from the trained artefacts that
    ``params.paths`` and ``params.render`` name (aligned crops in, no detection; MEAD level presets)."""
    return TalkPipeline.from_params(params).evaluation_renderer(**settings)


class Autocast:
    """A guided denoiser (``GuidedDenoiser``'s interface: call, ``at_step``, ``guided_at``) whose
    network runs under torch autocast (``render.precision``); its outputs, and so the sampler's
    state, stay float32. The context is entered per call, never held across a schedule's yields
    (the VAE decode between them runs in float32)."""

    def __init__(self, guided, device_type: str, dtype: str):
        import torch

        self.inner, self.device_type, self.dtype = guided, device_type, getattr(torch, dtype)

    def _run(self, fn, x, sigma, **cond):
        import torch

        with torch.autocast(self.device_type, dtype=self.dtype):
            return fn(x, sigma, **cond).float()

    def __call__(self, x, sigma, **cond):
        return self._run(self.inner, x, sigma, **cond)

    def at_step(self, i: int):
        fn = self.inner.at_step(i)
        return lambda x, sigma, **cond: self._run(fn, x, sigma, **cond)

    def guided_at(self, i: int) -> bool:
        return self.inner.guided_at(i)


class FpsColumn:
    """rich progress column: frames per second of the task."""

    def __new__(cls):
        from rich.progress import ProgressColumn
        from rich.text import Text

        class _Fps(ProgressColumn):
            def render(self, task):
                speed = task.finished_speed or task.speed
                return Text(f"{speed:5.1f} frames/s" if speed else "  ... frames/s", style="cyan")

        return _Fps()
