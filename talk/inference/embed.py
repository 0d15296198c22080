"""`talk embed`: the emotion (and style) Gaussian of any reference video or audio.

DICE-Talk §3.1: because the embedder attends over audio and facial-expression tokens, a clip's
emotion can come from audio only, video only, or both — "emotion from a reference clip", which
the authors' release does not provide. This runs the training-time data path on a new file:
faces are tracked and cropped like `crop_align` (talk/media/faces.py: the same tracker, gap
interpolation and landmark smoothing), the audio is encoded like `audio_features`
(stages/audio_features.py: the same Whisper and chunking), landmarks are normalised like
talk/data/clips.py, with the population template of the prior (or the template of a neutral
clip of the same person, ``neutral``), and the trained prior (``paths.prior``) embeds them.

Output (.npz, no pickles): ``mu``, ``logvar`` (the emotion head: what the Emotion Bank reads),
``style_mu``, ``style_logvar`` (when the prior has a style head), ``source``, ``mode``
(``both`` / ``audio`` / ``video``), ``n_frames``, ``template``, and the match probability of the
clip against every emotion preset (``preset_names``, ``preset_match``).

``embed_clip(path, prior, whisper, chunking, ...)`` is the library entry point, ``embed_reference``
render's ``--emotion-from`` / ``--style-from``; ``run`` is `talk embed`.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from talk.core import runtime
from talk.core.errors import TalkError
from talk.core.fs import atomic_path
from talk.media import io as media

MODES = ("auto", "both", "audio", "video")


def track_landmarks(path: Path, face=None, image_size: int = 128, max_frames: int | None = None) -> np.ndarray:
    """(T, 68, 2) float32 crop-pixel landmarks of the largest face of a video, as crop_align makes them.

    ``face``: a ``stages.faces.FaceConfig`` (``params.crop_align.face``; default settings when None).
    """
    from talk.media import faces

    cfg = face or faces.FaceConfig()
    frames = list(itertools.islice(media.iter_video(path, strict=True), max_frames))  # damaged clip: an error
    if not frames:
        raise TalkError(f"{path}: no video frames")
    track = faces.FaceTracker(cfg).track(frames)
    if not track.found.any():
        raise TalkError(f"{path}: no face found")
    lost = int((~track.found).sum())
    if lost:
        runtime.log.info("%s: no face in %d of %d frames (interpolated)", Path(path).name, lost, len(frames))
    _, lm = faces.clip_transforms(faces.interpolate_gaps(track.landmarks), cfg, image_size)
    return lm


def check_whisper(whisper, prior) -> None:
    """TalkError when ``whisper`` is not the encoder whose features the prior was trained on."""
    from talk.audio.whisper_ckpt import encoder_sha256

    trained_with = (prior.config.get("audio_features") or {}).get("model")
    if isinstance(trained_with, dict) and trained_with.get("encoder_sha256"):
        if encoder_sha256(whisper) != trained_with["encoder_sha256"]:
            raise TalkError(f"this Whisper model is not the one the prior was trained with "
                            f"({trained_with.get('spec')}): set audio_features.whisper back or retrain the prior")


def resolve_mode(info: media.MediaInfo, mode: str) -> str:
    """``auto`` -> both / video / audio by the streams present; TalkError when a stream is missing."""
    if mode not in MODES:
        raise TalkError(f"unknown mode {mode!r} (one of {', '.join(MODES)})")
    if mode == "auto":
        mode = "both" if info.has_video and info.has_audio else ("video" if info.has_video else "audio")
    if mode in ("both", "video") and not info.has_video:
        raise TalkError(f"{info.path}: no video stream for a {mode} embedding (use --audio-only)")
    if mode in ("both", "audio") and not info.has_audio:
        raise TalkError(f"{info.path}: no audio stream for a {mode} embedding (use --video-only)")
    return mode


def embed_clip(
    path: Path | str,
    prior,
    whisper=None,
    chunking: dict | None = None,
    *,
    mode: str = "auto",
    face=None,
    image_size: int = 128,
    neutral: Path | str | None = None,
    max_seconds: float = 20.0,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Embed one reference file with a loaded prior (``load_prior``) and Whisper (``load_whisper``).

    Returns the arrays ``run`` writes (module docstring). ``chunking``: keyword arguments of
    ``encode_audio`` (``params.audio_features.chunking``); ``face``: ``params.crop_align.face``;
    ``neutral``: a neutral video of the same person, whose landmark mean becomes the template.
    """
    import torch

    from talk.audio.features import encode_audio
    from talk.data.clips import expression_features, mean_shape, normalise_landmarks
    from talk.models.prior import sample_gaussian

    path = Path(path)
    mode = resolve_mode(media.probe(path), mode)
    pc = prior.model.prior_cfg
    max_frames = max(1, int(max_seconds * media.VIDEO_FPS))

    template, template_name = prior.template.cpu().numpy(), "population"
    if neutral is not None:
        t = mean_shape([normalise_landmarks(track_landmarks(Path(neutral), face, image_size, max_frames))])
        if t is None:
            raise TalkError(f"{neutral}: no usable face for the neutral template")
        template, template_name = t, f"neutral:{neutral}"

    device = next(prior.model.parameters()).device
    kw: dict = {}
    n_frames = None
    if mode in ("both", "video"):
        lm = track_landmarks(path, face, image_size, max_frames)
        n_frames = len(lm)
        x, valid = expression_features(normalise_landmarks(lm), template)
        kw.update(visual=torch.from_numpy(x)[None].to(device), visual_mask=torch.from_numpy(valid)[None].to(device))
    if mode in ("both", "audio"):
        if whisper is None:
            raise ValueError("an audio embedding needs a Whisper model (talk.audio.whisper_ckpt.load_whisper)")
        check_whisper(whisper, prior)
        samples = media.read_audio(path, strict=True)
        if n_frames is None:
            n_frames = min(max_frames, len(samples) * media.VIDEO_FPS // media.AUDIO_RATE)
        if n_frames < 1:
            raise TalkError(f"{path}: audio shorter than one video frame")
        a = encode_audio(samples, n_frames, whisper, **(chunking or {}))  # (2T, L, D) float16
        if a.shape[1:] != (pc.audio_layers, pc.audio_dim):
            raise TalkError(f"Whisper gives (L, D) = {a.shape[1:]}, the prior expects ({pc.audio_layers}, {pc.audio_dim})")
        kw.update(audio=torch.from_numpy(a.astype(np.float32))[None].to(device))

    head = prior.model.bank_head
    with torch.no_grad():
        out = {h: (mu.cpu(), lv.cpu()) for h, (mu, lv) in prior.model(**kw).items()}
        res: dict[str, np.ndarray] = {
            "mu": out[head][0][0].numpy(), "logvar": out[head][1][0].numpy(),
            "source": np.array(str(path)), "mode": np.array(mode), "n_frames": np.array(n_frames, np.int64),
            "template": np.array(template_name), "head": np.array(head),
        }
        for h, (mu, lv) in out.items():
            if h != head:
                res[f"{h}_mu"], res[f"{h}_logvar"] = mu[0].numpy(), lv[0].numpy()
        names = [k for k in prior.presets if k.startswith("emotion/") and k.count("/") == 1]
        if names and head == "emotion":
            gen = torch.Generator().manual_seed(seed)
            z = sample_gaussian(out[head][0], out[head][1], 8, gen)  # (8, 1, E)
            pm = torch.stack([prior.presets[n][0] for n in names]).float()
            pl = torch.stack([prior.presets[n][1] for n in names]).float()
            zp = sample_gaussian(pm, pl, 8, gen)  # (8, P, E)
            res["preset_names"] = np.array([n.split("/", 1)[1] for n in names])
            match = prior.model.losses[head].match_probability(z.to(device), zp.to(device))  # (1, P)
            res["preset_match"] = match[0].cpu().numpy()
    return res


def embed_reference(path: Path, prior, whisper, head: str, chunking: dict, face=None,
                    image_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(mean, logvar) of ``head`` (emotion / style) for a reference clip (video and/or audio, through
    ``embed_clip``) or a `talk embed` .npz: render's ``--emotion-from`` / ``--style-from``."""
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
    result = embed_clip(path, prior, whisper, chunking, face=face, image_size=image_size)
    mu, logvar = result[f"{prefix}mu"], result[f"{prefix}logvar"]
    return np.asarray(mu, np.float32).reshape(-1), np.asarray(logvar, np.float32).reshape(-1)


def _report(res: dict[str, np.ndarray]) -> None:
    from rich.table import Table

    t = Table(title=f"{Path(str(res['source'])).name}: {res['mode']} embedding, {int(res['n_frames'])} frames")
    t.add_column("emotion preset")
    t.add_column("match probability", justify="right")
    if "preset_match" in res:
        for k in np.argsort(-res["preset_match"])[:3]:
            t.add_row(str(res["preset_names"][k]), f"{res['preset_match'][k]:.3f}")
    t.add_row("mean sigma", f"{float(np.exp(0.5 * res['logvar']).mean()):.3f}")
    runtime.console.print(t)


def run(params, clip: Path, out: Path, mode: str = "auto", neutral: Path | None = None,
        prior_dir: Path | None = None, max_seconds: float = 20.0) -> Path:
    """Embed ``clip`` with the prior in ``prior_dir`` (default ``paths.prior``); write ``out`` (.npz)."""
    from talk.artifacts.prior import load_prior
    from talk.core.fs import check_output

    check_output(out, (".npz",))  # before any model loads: np.savez writes an .npz whatever the name
    mode = resolve_mode(media.probe(clip), mode)
    prior = load_prior(prior_dir or params.paths.prior)
    whisper = None
    if mode in ("both", "audio"):
        from talk.audio.whisper_ckpt import load_whisper

        whisper = load_whisper(params.audio_features.whisper, params.paths.cache)
    res = embed_clip(clip, prior, whisper, params.audio_features.chunking, mode=mode, face=params.crop_align.face,
                     image_size=params.model.image_size, neutral=neutral, max_seconds=max_seconds, seed=params.base.seed)
    out = Path(out)
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.savez(f, **res)
    _report(res)
    runtime.console.print(f"wrote {out} ({json.dumps({'mode': str(res['mode']), 'dims': int(res['mu'].shape[0])})})")
    return out
