"""Whisper encoder states at 50 Hz for audio of any length: what audio_features stores for every
clip and what rendering computes for new speech (same code, so the two cannot drift).

The L states follow Hugging Face's ``output_hidden_states`` convention: the convolutional embedding
plus positional embedding, the outputs of blocks 1..n-1, and ``ln_post`` applied to block n's
output. The log-Mel spectrogram is computed once over the whole clip; the encoder runs on windows
of at most ``window_s`` (its positional embedding's length), overlapping for long audio, the seam in
the middle of the overlap so every kept frame has ``context_s`` of real audio on both sides.
"""

from __future__ import annotations

import math

import numpy as np

from talk.core.errors import TalkError
from talk.media import io as media

RATE_HZ = 50  # Whisper encoder frames per second (hop 160 samples at 16 kHz, conv stride 2)


SAMPLES_PER_FRAME = media.AUDIO_RATE // RATE_HZ  # 320 samples per encoder frame


FRAMES_PER_VIDEO_FRAME = RATE_HZ // media.VIDEO_FPS  # 2


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
