"""Stage ``cache_latents``: VAE posteriors of every cropped frame, in an LMDB (talk/data/latent_cache.py).

Diffusion training reads latents, never video (LDM §3: the denoiser works in the autoencoder's
latent space). For each clip of the crop manifest this stage decodes ``frames.mp4``, encodes every
frame with the VAE of ``fit_vae`` and stores the posterior mean and std (fp16) under the clip's id.

Resumable: clips are committed in batched transactions; a killed run loses at most the batch in
flight, and re-running skips every clip whose entry matches its frames.mp4 (sha256) and frame
count. Entries of clips no longer in the manifest are removed. A cache made with another VAE (or
format version) is rebuilt from scratch. ``verify`` (``talk cache-latents --verify``) checks every
entry and lists the problems (exit 2).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

from talk.artifacts.vae import encode_frames, load_vae, vae_identity
from talk.core.errors import TalkError
from talk.core.params import one_of, rng
from talk.core.runtime import console, log, progress
from talk.data import latent_cache as lc
from talk.data.crops import clip_file, read_manifest
from talk.media import io as media


@dataclasses.dataclass(frozen=True)
class Config:
    crops: Path = Path("data/crops")  # input: crop_align's folder (manifest.csv, <clip>/frames.mp4)
    vae: Path = Path("artifacts/vae")  # input: fit_vae's output folder
    out: Path = Path("data/latents.lmdb")  # output: LMDB folder (data.mdb, lock.mdb), resumed in place
    batch_size: int = dataclasses.field(default=32, metadata=rng(1))  # frames per encoder forward pass
    autocast: str = dataclasses.field(default="bfloat16", metadata=one_of("float32", "bfloat16", "float16"))  # encoder compute dtype (the cache is fp16 either way)
    commit_mb: float = dataclasses.field(default=64.0, metadata=rng(0.0))  # MB of encoded clips per write transaction (what a kill can lose); 0 = one clip each
    map_size_mb: int = dataclasses.field(default=0, metadata=rng(0))  # initial LMDB map size in MB; 0 = estimated from the manifest (it grows when full)


def encode_clip(vae, path: Path, size: int, batch: int, autocast: str) -> tuple:
    """Posterior mean and std, float32 (T, C, h, w) numpy, of every frame of a crop video,
    decoded and encoded ``batch`` frames at a time (memory bounded for long clips)."""
    import numpy as np

    means, stds, chunk = [], [], []

    def flush() -> None:
        frames = np.stack(chunk)  # (B, S, S, 3) uint8
        if frames.shape[1:] != (size, size, 3):
            raise TalkError(f"{path}: frames are {frames.shape[2]}x{frames.shape[1]}, model.image_size is {size}")
        m, s = encode_frames(vae, frames, batch, autocast)
        means.append(m.numpy())
        stds.append(s.numpy())
        chunk.clear()

    for frame in media.iter_video(path, fps=None):
        chunk.append(frame)
        if len(chunk) == batch:
            flush()
    if chunk:
        flush()
    if not means:
        raise TalkError(f"{path}: no video frames")
    return np.concatenate(means), np.concatenate(stds)


def _problems_table(problems: list[str], limit: int = 50):
    from rich.table import Table

    table = Table(title=f"latent cache: {len(problems)} problem(s)")
    table.add_column("clip")
    table.add_column("problem")
    for p in problems[:limit]:
        clip, _, what = p.partition(": ")
        table.add_row(clip, what)
    if len(problems) > limit:
        table.add_row("...", f"{len(problems) - limit} more")
    return table


def verify(params) -> list[str]:
    """Every problem of the cache against the manifest and the configured VAE; raises if any."""
    cfg: Config = params.cache_latents
    df = read_manifest(cfg.crops)
    expected = {c: int(n) for c, n in zip(df["clip_id"], df["n_frames"])}
    problems = lc.verify(cfg.out, expected, vae_identity(cfg.vae))
    if problems:
        console.print(_problems_table(problems))
        raise TalkError(f"latent cache {cfg.out}: {len(problems)} problem(s), listed above; re-run `talk cache-latents`")
    console.print(f"[green]latent cache {cfg.out}: {len(expected)} clips, all entries sound[/]", highlight=False)
    return problems


def run(params, verify_only: bool = False) -> dict[str, Any]:
    """Encode every clip not cached yet (or changed) and commit in batches; prune stale clips."""
    from rich.table import Table

    from talk.core.runtime import device as pick_device

    if verify_only:
        verify(params)
        return {"problems": 0}
    cfg: Config = params.cache_latents
    size = params.model.image_size
    df = read_manifest(cfg.crops)
    expected = {c: int(n) for c, n in zip(df["clip_id"], df["n_frames"])}
    device = pick_device(params.base.device)
    vae, scaling, identity = load_vae(cfg.vae, device)
    down = 2 ** (len(vae.config.block_out_channels) - 1)
    if size % down:
        raise TalkError(f"model.image_size {size} is not a multiple of the VAE's downsampling {down}")
    shape = (int(vae.config.latent_channels), size // down, size // down)  # (C, h, w)
    meta = lc.make_meta(identity, dict(vae.config), scaling, shape, size)

    out = Path(cfg.out)
    if lc.is_cache_dir(out):
        old = lc.read_meta_of(lc.env(out))
        why = lc.meta_mismatch(old, identity) or (None if old["latent_shape"] == list(shape) else "other latent shape")
        if why is not None:
            log.warning("cache_latents: rebuilding %s (%s)", out, why)
            lc.remove_cache(out)
    frame_bytes = 2 * 2 * math.prod(shape)  # mean + std, fp16
    estimate = int(1.25 * sum(expected.values()) * (frame_bytes + 64)) + (1 << 20)
    map_size = cfg.map_size_mb << 20 if cfg.map_size_mb else max(1 << 24, estimate)
    writer = lc.CacheWriter(out, meta, map_size)
    try:
        entries = writer.entries()
        stale = [k for k in entries if k not in expected]
        writer.delete(stale)
        encoded = skipped = frames_done = 0
        pending: list[tuple[str, bytes]] = []
        pending_bytes = 0
        t0 = time.perf_counter()
        with progress() as bar:
            task = bar.add_task("cache latents", total=sum(expected.values()))
            for row in df.itertuples(index=False):
                clip, n = row.clip_id, int(row.n_frames)
                path = clip_file(cfg.crops, row, "frames.mp4")
                digest = lc.file_digest(path)
                if entries.get(clip) == (n, digest):
                    skipped += 1
                    bar.advance(task, n)
                    continue
                mean, std = encode_clip(vae, path, size, cfg.batch_size, cfg.autocast)  # (T, C, h, w)
                if len(mean) != n:
                    raise TalkError(f"{path}: {len(mean)} frames, the crop manifest says {n}; re-run `talk crop-align`")
                value = lc.pack(mean, std, digest)
                pending.append((clip, value))
                pending_bytes += len(value)
                if pending_bytes >= cfg.commit_mb * 2**20:
                    writer.put(pending)
                    pending, pending_bytes = [], 0
                encoded += 1
                frames_done += n
                bar.advance(task, n)
            writer.put(pending)
        wall = time.perf_counter() - t0
        db_bytes = writer.size_bytes()
    finally:
        writer.close()

    table = Table(title=f"cache_latents -> {out}")
    table.add_column("item")
    table.add_column("value", justify="right")
    table.add_row("clips (encoded / skipped / removed)", f"{encoded} / {skipped} / {len(stale)}")
    table.add_row("frames encoded", str(frames_done))
    table.add_row("speed", f"{frames_done / wall:.0f} frames/s" if frames_done and wall > 0 else "-")
    table.add_row("latent", f"{shape} fp16 mean + std, scaling factor {scaling:.4f}")
    table.add_row("database", f"{db_bytes / 2**20:.1f} MB")
    table.add_row("VAE", identity[:16])
    console.print(table)
    return {"encoded": encoded, "skipped": skipped, "removed": len(stale), "frames": frames_done,
            "wall_s": wall, "identity": identity, "db_bytes": db_bytes}
