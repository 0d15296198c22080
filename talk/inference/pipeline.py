"""``TalkPipeline``: portrait + speech + emotion -> talking-portrait frames, from the trained artefacts."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from talk.core.errors import TalkError
from talk.core.params import one_of, rng
from talk.inference.emotion import check_emotion, check_emotions, emotion_gaussian, parse_blend
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
from talk.models.emotions import EMOTIONS

SAMPLERS = ("euler", "euler_ancestral", "heun", "dpmpp_2m")  # models.sampling.SAMPLERS


PRODUCERS = {  # artefact -> (what it is, stage that writes it)
    "vae": ("VAE", "fit_vae"),
    "prior": ("emotion / style prior", "pretrain_prior"),
    "denoiser": ("denoiser", "finetune_disc"),
}


@dataclasses.dataclass(frozen=True)
class Config:
    """The ``render`` section: artefacts, the demo set, and the sampling settings (CLI defaults)."""

    vae: Path = Path("artifacts/vae")  # input: fit_vae's AutoencoderKL folder
    prior: Path = Path("artifacts/prior")  # input: pretrain_prior's folder (embedders, presets)
    denoiser: Path = Path("artifacts/finetune_disc")  # input: the denoiser folder (finetune_disc, or train_diffusion's artifacts/diffusion)
    out: Path = Path("artifacts/render")  # output: <emotion>.mp4 per demo emotion, contact_sheet.png, render.json
    demo_image: Path = Path("data/sources/portraits/dreamtalk__f30.png")  # input: the demo portrait (M001, one of the sample identities)
    demo_audio: Path = Path("data/sources/speech/sadtalker__RD_Radio31_000__02.wav")  # input: the demo speech
    demo_seconds: float = dataclasses.field(default=4.0, metadata=rng(0.0))  # s of demo speech rendered per emotion (0 = all of it)
    emotions: tuple[str, ...] = EMOTIONS  # emotions of the demo set, one video each
    intensity: float = dataclasses.field(default=1.0, metadata=rng(0.0, 1.0))  # emotion strength: 0 = neutral preset, 1 = the emotion's strongest preset
    steps: int = dataclasses.field(default=5, metadata=rng(1))  # sampler steps (per frame)
    sampler: str = dataclasses.field(default="euler", metadata=one_of(*SAMPLERS))  # models.sampling sampler (euler = DDIM with eta 0)
    sigmas: str = dataclasses.field(default="karras", metadata=one_of("karras", "uniform"))  # noise-level spacing of the steps
    guidance_ref: float = dataclasses.field(default=1.0, metadata=rng(0.0))  # scale of the reference-image branch (1 = no unconditional branch)
    guidance_audio: float = dataclasses.field(default=2.0, metadata=rng(0.0))  # scale of the audio branch (lip sync)
    guidance_emotion: float = dataclasses.field(default=3.0, metadata=rng(0.0))  # scale of the emotion branch (expression strength)
    guidance_style: float = dataclasses.field(default=1.0, metadata=rng(0.0))  # scale of the style branch (SVP; used when a style is given)
    guidance_from: float = dataclasses.field(default=0.2, metadata=rng(0.0, 1.0))  # first guided step, fraction of the steps (guidance interval)
    guidance_to: float = dataclasses.field(default=0.8, metadata=rng(0.0, 1.0))  # end of the guided steps, fraction of the steps; the others run one branch
    schedule: str = dataclasses.field(default="rolling", metadata=one_of("window", "rolling"))  # window: W frames in parallel, motion from the previous window; rolling: diagonal denoising, every frame sees its own 2 previous frames
    window: int = dataclasses.field(default=25, metadata=rng(1))  # frames denoised in parallel per window (frame backbone; clip backbone: its F)
    overlap: int = dataclasses.field(default=0, metadata=rng(0))  # frames shared by consecutive windows, cross-faded in latent space
    anchor: float = dataclasses.field(default=0.1, metadata=rng(0.0, 1.0))  # blend of the motion context towards the reference latent (identity re-anchoring)
    anchor_colour: bool = True  # reset the motion context's per-channel latent mean to the reference's (colour re-anchoring)
    shared_noise: bool = True  # one noise tensor for every frame (steadier video); false: per-frame noise seeds
    seed: int = dataclasses.field(default=0, metadata=rng(0))  # sampling seed
    decode_batch: int = dataclasses.field(default=16, metadata=rng(1))  # frames per VAE decode call
    crop: bool = True  # detect, crop and align the portrait like crop_align (false: it is an aligned crop already)
    paste_back: bool = False  # paste the generated crop back into the full picture
    feather: float = dataclasses.field(default=0.08, metadata=rng(0.0, 0.5))  # paste-back mask edge ramp, fraction of the crop side
    crf: int = dataclasses.field(default=18, metadata=rng(0, 51))  # H.264 quality of the written mp4
    sheet_frames: int = dataclasses.field(default=6, metadata=rng(1))  # frames per emotion in the contact sheet
    sheet_size: int = dataclasses.field(default=128, metadata=rng(16))  # px, side of a contact-sheet cell

    def validate(self) -> None:
        check_emotions(self.emotions, "render.emotions")
        if self.guidance_from > self.guidance_to:
            raise TalkError(f"render.guidance_from ({self.guidance_from}) is after render.guidance_to ({self.guidance_to})")
        if self.overlap >= self.window:
            raise TalkError(f"render.overlap ({self.overlap}) must be smaller than render.window ({self.window})")


def audio_windows(feats, frames: Sequence[int], k: int):
    """Whisper windows of the given video frames: feats (2T, L, D) -> (F, k, L, D).

    The training data's indexing (``stages.dataset.audio_window_indices``): video frame t owns
    encoder frames 2t and 2t+1 (docs/pipeline.md); its window is the k frames centred on that
    pair, indices clamped at the clip's ends.
    """
    import torch

    from talk.data.windows import audio_window_indices

    idx = audio_window_indices(np.asarray(list(frames)), k, feats.shape[0])  # (F, k)
    return feats[torch.from_numpy(idx).to(feats.device)].float()


def plan_windows(n: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """Windows [start, stop) covering n frames; consecutive windows share ``overlap`` frames."""
    if n <= window:
        return [(0, n)]
    stride = window - overlap
    starts = list(range(0, n - window, stride)) + [n - window]
    out, prev = [], None
    for s in starts:
        if prev is not None and s <= prev[0]:
            continue
        out.append((s, s + window))
        prev = out[-1]
    return out


def artefact_error(kind: str, path: Path, detail: str = "") -> TalkError:
    what, stage = PRODUCERS[kind]
    hint = f"run `talk {stage.replace('_', '-')}` or `dvc repro {stage}`"
    if kind == "denoiser":
        hint += " (or point render.denoiser to train_diffusion's artifacts/diffusion)"
    return TalkError(f"{what} not found at {path}{': ' + detail if detail else ''}; {hint}")


def _check_dir(kind: str, path: Path, needs: Sequence[str]) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise artefact_error(kind, path)
    missing = [n for n in needs if not (path / n).exists()]
    if missing:
        raise artefact_error(kind, path, f"{', '.join(missing)} missing")
    return path


def load_vae(path: Path, device):
    """(AutoencoderKL in eval mode, scaling factor) from fit_vae's folder."""
    _check_dir("vae", path, ["config.json"])
    from talk.artifacts.vae import load_vae as _load

    vae, scale, _ = _load(path, device)
    return vae, float(scale)


def load_prior(path: Path, device):
    _check_dir("prior", path, ["config.json", "model.safetensors"])
    from talk.artifacts.prior import load_prior as _load

    return _load(path, device)


def load_denoiser(path: Path, device):
    """(TalkDenoiser, NoiseSchedule) from a train_diffusion / finetune_disc folder."""
    _check_dir("denoiser", path, ["config.json"])
    from talk.artifacts.denoiser import load_denoiser as _load

    loaded = _load(path, device)
    net, schedule = loaded if isinstance(loaded, tuple) else (loaded, None)
    if schedule is None:
        from talk.models.denoiser import make_schedule

        schedule = make_schedule(net.spec)
    return net.to(device).eval().requires_grad_(False), schedule.to(device)


def embed_reference(path: Path, prior, whisper, head: str, chunking: dict, face=None, image_size: int = 128) -> tuple[Any, Any]:
    """(mean, logvar) of ``head`` for a reference clip (video and/or audio) or a `talk embed` .npz."""
    path = Path(path)
    if not path.is_file():
        raise TalkError(f"reference clip not found: {path}")
    prefix = "" if head == prior.model.bank_head else f"{head}_"
    if path.suffix.lower() == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                if f"{prefix}mu" not in z or f"{prefix}logvar" not in z:
                    raise TalkError(f"{path}: no {prefix}mu / {prefix}logvar arrays (write it with `talk embed`)")
                return np.asarray(z[f"{prefix}mu"], np.float32).reshape(-1), np.asarray(z[f"{prefix}logvar"], np.float32).reshape(-1)
        except (OSError, ValueError) as e:
            raise TalkError(f"{path}: not a readable .npz ({type(e).__name__})") from None
    from talk.inference import embed

    result = embed.embed_clip(path, prior, whisper, chunking, face=face, image_size=image_size)
    mu, logvar = result[f"{prefix}mu"], result[f"{prefix}logvar"]
    return np.asarray(mu, np.float32).reshape(-1), np.asarray(logvar, np.float32).reshape(-1)


def guided_steps(cfg: Config) -> set[int]:
    """Sampler steps that run every guidance branch: step i (of n) when its centre (i + 0.5) / n lies in
    [``guidance_from``, ``guidance_to``)."""
    return {i for i in range(cfg.steps) if cfg.guidance_from <= (i + 0.5) / cfg.steps < cfg.guidance_to}


class IntervalGuidance:
    """Guided denoiser on the noise levels ``guided_sigmas``, the plain (all conditions on) one elsewhere."""

    def __init__(self, guided, plain, guided_sigmas):
        self.guided, self.plain = guided, plain
        self.levels = [float(v) for v in guided_sigmas]

    def __call__(self, x, sigma, **cond):
        s = float(sigma.reshape(-1)[0])
        hit = any(abs(s - v) <= 1e-6 * max(1.0, v) for v in self.levels)
        return (self.guided if hit else self.plain)(x, sigma, **cond)


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
                 settings: Config | None = None, chunking: dict | None = None, device="cpu"):
        import torch

        from talk.models.diffusion import KarrasDenoiser

        self.vae, self.vae_scale = vae, vae_scale
        self.prior, self.denoiser, self.schedule = prior, denoiser, schedule
        self.whisper, self.aligner = whisper, aligner
        self.settings = settings or Config()
        self.chunking = dict(chunking or {})
        self.device = torch.device(device)
        self.karras = KarrasDenoiser(denoiser, schedule)
        self.spec = denoiser.spec
        self._check_shapes()

    # -- construction

    @classmethod
    def from_pretrained(cls, source: str | Path | Any = "artifacts", *, whisper: str | None = None, face=None,
                        device: str = "cpu", cache_dir: str | Path | None = None, **settings) -> TalkPipeline:
        """From an artefacts folder (``<dir>/vae``, ``<dir>/prior``, ``<dir>/finetune_disc`` or
        ``<dir>/diffusion``) or from parsed params (``stages.params.load``). ``settings`` override
        fields of ``Config`` (steps, guidance_*, window, ...)."""
        if hasattr(source, "sections"):
            return cls.from_params(source, device=device, **settings)
        root = Path(source)
        den = root / "finetune_disc"
        if not (den / "config.json").is_file() and (root / "diffusion" / "config.json").is_file():
            den = root / "diffusion"
        cfg = dataclasses.replace(Config(), vae=root / "vae", prior=root / "prior", denoiser=den, **settings)
        cfg.validate()
        from talk.audio.whisper_ckpt import BUILTIN
        from talk.core.params import Paths
        from talk.media.faces import FaceConfig

        return cls.build(cfg, whisper=whisper or BUILTIN, cache_dir=cache_dir or Paths().cache,
                         face=face or FaceConfig(), device=device)

    @classmethod
    def from_params(cls, params, device: str | None = None, **settings) -> TalkPipeline:
        from talk.audio.whisper_ckpt import BUILTIN
        from talk.core.runtime import device as pick_device
        from talk.media.faces import FaceConfig

        cfg = dataclasses.replace(params.render, **settings) if settings else params.render
        cfg.validate()
        sections = params.sections
        af = sections.get("audio_features")
        ca = sections.get("crop_align")
        return cls.build(
            cfg,
            whisper=af.whisper if af is not None else BUILTIN,
            cache_dir=params.paths.cache,
            face=ca.face if ca is not None else FaceConfig(),
            chunking=af.chunking if af is not None else None,
            device=str(device or pick_device(params.base.device)),
        )

    @classmethod
    def build(cls, cfg: Config, *, whisper: str, cache_dir, face, chunking=None, device="cpu") -> TalkPipeline:
        """Load every artefact named by ``cfg`` (a missing one is a TalkError naming its stage)."""
        import torch

        from talk.audio.whisper_ckpt import load_whisper
        from talk.media.faces import Aligner

        device = torch.device(device)
        # check all three before loading any (one message per missing artefact, the first one wins)
        _check_dir("vae", cfg.vae, ["config.json"])
        _check_dir("prior", cfg.prior, ["config.json", "model.safetensors"])
        _check_dir("denoiser", cfg.denoiser, ["config.json"])
        denoiser, schedule = load_denoiser(cfg.denoiser, device)
        vae, scale = load_vae(cfg.vae, device)
        prior = load_prior(cfg.prior, device)
        model = load_whisper(whisper, cache_dir, device=str(device))
        aligner = Aligner(face, denoiser.spec.latent_size * _vae_factor(vae))
        return cls(vae=vae, vae_scale=scale, prior=prior, denoiser=denoiser, schedule=schedule, whisper=model,
                   aligner=aligner, settings=cfg, chunking=chunking, device=device)

    def _check_shapes(self) -> None:
        spec = self.spec
        dims = self.whisper.dims
        if (dims.n_audio_layer + 1, dims.n_audio_state) != (spec.audio_layers, spec.audio_dim):
            raise TalkError(f"the denoiser was trained on audio features (L={spec.audio_layers}, D={spec.audio_dim}) "
                            f"but the Whisper model gives (L={dims.n_audio_layer + 1}, D={dims.n_audio_state}): "
                            f"use the audio_features.whisper it was trained with")
        if self.vae.config.latent_channels != spec.latent_channels:
            raise TalkError(f"the VAE has {self.vae.config.latent_channels} latent channels, the denoiser "
                            f"{spec.latent_channels}: they come from different trainings")
        presets = self.prior.presets
        if presets:
            dim = next(iter(presets.values()))[0].numel()
            if dim != spec.emotion_dim:
                raise TalkError(f"the prior's presets have {dim} dimensions, the denoiser expects {spec.emotion_dim}")

    @property
    def _face(self):
        return self.aligner.cfg if self.aligner is not None else None

    @property
    def image_size(self) -> int:
        return self.spec.latent_size * _vae_factor(self.vae)

    @property
    def has_style(self) -> bool:
        return self.spec.conditioning.style_tokens > 0 and self.spec.style_dim > 0

    # -- inputs

    def prepare(self, image: str | Path | np.ndarray, crop: bool | None = None) -> Prepared:
        """Detect, crop and align the portrait (``crop``), then VAE-encode it."""
        import cv2

        crop = self.settings.crop if crop is None else crop
        picture = load_image(image)
        S = self.image_size
        if crop:
            if self.aligner is None:
                raise TalkError("this pipeline has no face aligner: pass crop=False with an aligned crop")
            face, _, M = self.aligner.align_image(picture)
        else:
            face = picture
            if abs(face.shape[0] / face.shape[1] - 1) > 0.02:
                raise TalkError(f"--no-crop needs a square aligned face crop, got {face.shape[1]}x{face.shape[0]}")
            if face.shape[:2] != (S, S):
                face = cv2.resize(face, (S, S), interpolation=cv2.INTER_AREA if face.shape[0] > S else cv2.INTER_CUBIC)
            # picture px -> crop px (a scaling), so paste-back returns the picture's size
            sx, sy = S / picture.shape[1], S / picture.shape[0]
            M = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5]], np.float32)
        from talk.artifacts.vae import encode_frames

        mean, _ = encode_frames(self.vae, face[None])  # (1, C, h, w), unscaled posterior mean
        lat = (mean[0] * self.vae_scale).to(self.device)  # (C, h, w)
        return Prepared(picture=picture, crop=face, transform=M, latent=lat)

    def audio_features(self, samples: np.ndarray, n_frames: int):
        """Whisper states (2T, L, D) float16 on the pipeline's device (stages.audio_features); windows
        are cast to float32 when cut (``audio_windows``), so hours of audio stay small."""
        import torch

        from talk.audio.features import encode_audio

        feats = encode_audio(samples, n_frames, self.whisper, **self.chunking)
        return torch.from_numpy(feats).to(self.device)

    def emotion(self, emotion: str = "neutral", intensity: float = 1.0, blend=None, level: int | None = None,
                emotion_from: str | Path | None = None):
        """The emotion embedding z (E,) that conditions the denoiser (the Gaussian's mean)."""
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

        if style_from is None:
            return None
        if not self.has_style:
            raise TalkError("this denoiser was trained without style conditioning (model.conditioning.style_tokens: 0)")
        key = str(style_from)
        if key.startswith("style/") and key in self.prior.presets:
            return self.prior.presets[key][0].float().to(self.device)
        if "style" not in self.prior.model.heads:
            raise TalkError("the prior has no style head: --style-from needs a prior trained with model.prior.heads: [.., style]")
        mu, _ = embed_reference(Path(style_from), self.prior, self.whisper, "style", self.chunking, self._face, self.image_size)
        return torch.as_tensor(mu).float().to(self.device)

    # -- sampling

    def guided(self, scales: dict[str, float], style: bool):
        """The multi-branch guided denoiser (one batched forward per call)."""
        from talk.models.sampling import GuidedDenoiser

        order = ("ref", "audio", "emotion") + (("style",) if style else ())
        return GuidedDenoiser(self.karras, {k: v for k, v in scales.items() if k in order}, order)

    def _denoiser(self, cfg: Config, style: bool, sigmas):
        """D(x, σ, **cond) for the samplers: guided on the steps of the guidance interval, the single
        all-conditions branch on the others (Kynkäänniemi et al. 2024: guidance in a limited interval)."""
        guided = self.guided({"ref": cfg.guidance_ref, "audio": cfg.guidance_audio, "emotion": cfg.guidance_emotion,
                              "style": cfg.guidance_style}, style)
        steps = guided_steps(cfg)
        if len(steps) == cfg.steps:
            return guided
        return IntervalGuidance(guided, self.karras, sigmas[sorted(steps)] if steps else sigmas[:0])

    def _noise(self, frames: Sequence[int], seed: int, shared: bool):
        """Unit noise (F, C, h, w) for the given frame indices, from per-frame (or one shared) seeds."""
        from talk.models.sampling import per_sample_noise

        c, s = self.spec.latent_channels, self.spec.latent_size
        seeds = [seed] * len(frames) if shared else [seed * 1_000_003 + t for t in frames]
        return per_sample_noise((len(frames), c, s, s), seeds, self.device)

    def _anchor(self, motion, ref, cfg: Config):
        """Re-anchor the motion context (M, C, h, w) to the reference latent (C, h, w)."""
        if cfg.anchor_colour:
            motion = motion - motion.mean((-1, -2), keepdim=True) + ref.mean((-1, -2), keepdim=True)
        if cfg.anchor > 0:
            motion = motion.lerp(ref.expand_as(motion), cfg.anchor)
        return motion

    def generate_latents(self, ref, feats, n_frames: int, z, style=None, cfg: Config | None = None) -> Iterator[tuple[int, Any]]:
        """Yield (first frame index, latents (n, C, h, w)) as frames become final, in order.

        ref (C, h, w) reference latent; feats (2T, L, D) Whisper states; z (E,) emotion embedding;
        style (S,) or None. Windows of ``cfg.window`` frames (clip backbone: its F) are denoised in
        one batch each; the M frames before a window are its motion context (re-anchored, see
        ``_anchor``); frames shared with the previous window are cross-faded linearly.
        """
        import torch

        from talk.models import sampling

        cfg = cfg or self.settings
        spec = self.spec
        M = spec.motion_frames
        clip = spec.denoiser.backbone == "clip"
        W = spec.target_frames if clip else cfg.window
        O = min(cfg.overlap, W - 1)
        sigmas = sampling.get_sigmas(self.schedule, cfg.steps, cfg.sigmas, device=self.device)
        if cfg.schedule == "rolling" and not clip:
            yield from self._rolling(ref, feats, n_frames, z, style, cfg, sigmas)
            return
        guided = self._denoiser(cfg, style is not None, sigmas)
        gen = torch.Generator(device=self.device).manual_seed(cfg.seed)  # ancestral samplers' fresh noise
        ref_b, z_b = ref[None], z[None].float()  # (1, C, h, w), (1, E)
        style_b = style[None].float() if style is not None else None
        windows = plan_windows(n_frames, W, O)
        out: dict[int, Any] = {}  # frame -> latent (C, h, w), kept while a later window may need it
        done = 0  # frames [0, done) are final and yielded
        for wi, (s, e) in enumerate(windows):
            idx = list(range(s, e))
            if clip and len(idx) < W:  # a clip backbone denoises exactly F frames: repeat the last one
                idx += [idx[-1]] * (W - len(idx))
            with torch.inference_mode():  # (a generator: the mode is not held across yields)
                motion = None
                if M:
                    motion = torch.stack([out[u] if u >= 0 else ref for u in range(s - M, s)])  # (M, C, h, w); the reference before frame 0
                    if s > 0:
                        motion = self._anchor(motion, ref, cfg)
                    motion = motion[None]  # (1, M, C, h, w)
                noise = self._noise(idx, cfg.seed, cfg.shared_noise)[None]  # (1, F, C, h, w)
                audio = audio_windows(feats, idx, spec.audio_window)[None]  # (1, F, k, L, D)
                extra = {"ref": ref_b, "motion": motion, "audio": audio, "emotion": z_b, "style": style_b}
                lat = sampling.sample(guided, noise, sigmas, cfg.sampler, extra_args=extra, generator=gen)[0, : e - s]
                shared = (windows[wi - 1][1] - s) if wi else 0  # frames the previous window also produced
                if shared > 0:
                    ramp = torch.linspace(0, 1, shared + 2, device=lat.device)[1:-1].view(-1, 1, 1, 1)
                    lat[:shared] = torch.lerp(torch.stack([out[u] for u in range(s, s + shared)]), lat[:shared], ramp)
                out.update({s + j: lat[j] for j in range(e - s)})
            final = windows[wi + 1][0] if wi + 1 < len(windows) else n_frames  # later windows never touch these
            if final > done:
                yield done, torch.stack([out[u] for u in range(done, final)])
                done = final
                for u in [u for u in out if u < done - M]:  # no later window reads these
                    del out[u]

    def _rolling(self, ref, feats, n_frames: int, z, style, cfg: Config, sigmas) -> Iterator[tuple[int, Any]]:
        """Diagonal ("rolling") denoising (FIFO-Diffusion, Kim et al. 2024) for the frame backbone.

        A queue holds ``steps`` consecutive frames at decreasing noise levels; each iteration moves
        every queued frame one Euler step down in ONE batched forward (all guidance branches of
        all rows), a finished frame leaves, a fresh one enters. Each frame's motion context is its
        own M previous frames (as in training, talk/data/windows.py): final latents, or the current
        denoised estimate of a frame still in the queue (one noise level lower). Cost per frame:
        one row per step, as in window mode.
        """
        import torch

        if cfg.sampler != "euler":
            raise TalkError(f"render.schedule rolling steps every frame with Euler; sampler '{cfg.sampler}' needs schedule: window")
        spec, M, S = self.spec, self.spec.motion_frames, cfg.steps
        scales = {"ref": cfg.guidance_ref, "audio": cfg.guidance_audio, "emotion": cfg.guidance_emotion,
                  "style": cfg.guidance_style}
        order = ("ref", "audio", "emotion") + (("style",) if style is not None else ())
        gsteps = guided_steps(cfg)
        out: dict[int, Any] = {}  # frame -> final latent (C, h, w), until yielded and no longer motion context
        x: dict[int, Any] = {}  # frame -> current noisy latent (C, h, w)
        est: dict[int, Any] = {}  # frame -> latest denoised estimate
        level: dict[int, int] = {}  # frame -> steps taken
        entered = done = yielded = 0
        while done < n_frames:
            with torch.inference_mode():
                if entered < n_frames:
                    x[entered] = self._noise([entered], cfg.seed, cfg.shared_noise)[0] * sigmas[0]
                    level[entered] = 0
                    entered += 1
                rows = sorted(x)
                motions = []
                for t in rows:
                    ctx = [ref if u < 0 else (out[u] if u < done else est[u]) for u in range(t - M, t)]
                    m = torch.stack(ctx) if M else None  # (M, C, h, w)
                    motions.append(self._anchor(m, ref, cfg) if M and t > 0 else m)
                b = len(rows)
                sig = torch.stack([sigmas[level[t]] for t in rows])  # (b,)
                cond = {"ref": ref.expand(b, *ref.shape), "motion": torch.stack(motions) if M else None,
                        "audio": audio_windows(feats, rows, spec.audio_window)[:, None],  # (b, 1, k, L, D)
                        "emotion": z[None].float().expand(b, -1),
                        "style": style[None].float().expand(b, -1) if style is not None else None}
                xs = torch.stack([x[t] for t in rows])[:, None]  # (b, 1, C, h, w)
                den = self.forward_rows(xs, sig, cond, [level[t] in gsteps for t in rows], scales, order)
                for j, t in enumerate(rows):
                    lv = level[t]
                    d = (xs[j, 0] - den[j, 0]) / sigmas[lv]
                    x[t] = xs[j, 0] + d * (sigmas[lv + 1] - sigmas[lv])
                    est[t] = den[j, 0]
                    level[t] = lv + 1
                    if level[t] == S:  # finished frames leave in order
                        out[t] = x.pop(t)
                        del est[t], level[t]
                        done = t + 1
            if done - yielded >= cfg.decode_batch or done == n_frames:
                yield yielded, torch.stack([out[u] for u in range(yielded, done)])
                yielded = done
                for u in [u for u in out if u < done - M]:
                    del out[u]

    def forward_rows(self, x, sigma, cond: dict, guided: Sequence[bool], scales: dict, order: Sequence[str]):
        """Denoised estimates of rows that are guided or not, in ONE batched forward.

        x (B, F, C, h, w), sigma (B,), cond tensors with batch B. A guided row contributes one
        stacked row per guidance branch (``models.sampling.guidance_branches``), combined with the
        branch weights; an unguided row contributes one row with every condition on.
        """
        import torch

        from talk.models.sampling import guidance_branches

        branches = guidance_branches({k: v for k, v in scales.items() if k in order}, order)
        full = [({c: True for c in order}, 1.0)]
        src, weight, masks = [], [], {c: [] for c in order}
        for j, g in enumerate(guided):
            for keep, w in branches if g else full:
                src.append(j)
                weight.append(w)
                for c in order:
                    masks[c].append(keep[c])
        idx = torch.tensor(src, device=x.device)
        keep = {c: torch.tensor(v, device=x.device) for c, v in masks.items()}
        out = self.karras(x[idx], sigma[idx], keep=keep,
                          **{k: (v[idx] if isinstance(v, torch.Tensor) else v) for k, v in cond.items()})  # (R, F, C, h, w)
        w = torch.tensor(weight, dtype=out.dtype, device=out.device).view(-1, *([1] * (out.dim() - 1)))
        return torch.zeros_like(x, dtype=out.dtype).index_add_(0, idx, out * w)

    def decode(self, latents) -> np.ndarray:
        """Scaled latents (n, C, h, w) -> RGB uint8 frames (n, S, S, 3), ``decode_batch`` at a time."""
        from talk.artifacts.vae import decode_latents

        return decode_latents(self.vae, latents, chunk=self.settings.decode_batch, scaling_factor=self.vae_scale)

    # -- the whole render

    def iter_frames(self, image, audio, *, emotion: str = "neutral", intensity: float | None = None, blend=None,
                    level: int | None = None, emotion_from=None, style_from=None, crop: bool | None = None,
                    paste_back: bool | None = None, show_progress: bool = True, **settings) -> tuple[int, Iterator[np.ndarray], np.ndarray]:
        """(frame count, frame iterator, 16 kHz samples): frames are produced while iterating.

        ``settings`` override ``Config`` fields for this call (steps, sampler, seed, guidance_*,
        window, overlap, anchor, ...).
        """
        cfg = dataclasses.replace(self.settings, **settings) if settings else self.settings
        cfg.validate()
        intensity = cfg.intensity if intensity is None else float(intensity)
        if not 0.0 <= intensity <= 1.0:
            raise TalkError(f"intensity must be in [0, 1], got {intensity}")
        paste = cfg.paste_back if paste_back is None else paste_back
        if emotion_from is None and not blend:
            check_emotion(emotion)
        samples = load_speech(audio)
        n = frame_count(len(samples))
        z = self.emotion(emotion, intensity, blend, level, emotion_from)
        sty = self.style(style_from)
        prep = self.prepare(image, crop)
        feats = self.audio_features(samples, n)
        mask = feather_mask(self.image_size, cfg.feather) if paste else None

        def frames() -> Iterator[np.ndarray]:
            from talk.core.runtime import progress

            with progress(FpsColumn()) as bar:
                task = bar.add_task("render", total=n, visible=show_progress)
                for _, lat in self.generate_latents(prep.latent, feats, n, z, sty, cfg):
                    for f in self.decode(lat):
                        yield paste_frame(f, prep.picture, prep.transform, mask) if paste else f
                    bar.advance(task, len(lat))

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
        written = media.write_video(out, even_frames(frames), fps=FPS, audio=sound, audio_rate=rate, crf=self.settings.crf)
        wall = time.perf_counter() - t0
        return {"out": str(out), "frames": written, "seconds": n / FPS, "wall_s": wall, "fps": written / wall if wall else 0.0}

    def evaluation_renderer(self, **settings):
        """``render_fn(ref_frame, audio, emotion, level) -> (T, S, S, 3)`` for stages.evaluate (aligned crops in)."""

        def render_fn(ref_frame: np.ndarray, audio: np.ndarray, emotion: str, level: int) -> np.ndarray:
            emo = emotion if emotion else "neutral"
            lvl = int(level) if level and emo != "neutral" else None
            return self(ref_frame, audio, emotion=emo, intensity=1.0, level=lvl, crop=False, show_progress=False, **settings)

        return render_fn


def evaluation_renderer(params, **settings):
    """``evaluate``'s ``render_fn(ref_frame, audio, emotion, level)`` from the trained artefacts that
    ``params.render`` names (aligned crops in, no detection; MEAD level presets)."""
    return TalkPipeline.from_params(params).evaluation_renderer(**settings)


def _vae_factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


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
