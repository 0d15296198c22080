"""The latent cache: an LMDB of VAE posteriors, one value per clip (docs/pipeline.md).

Training samples a fresh latent ``z = mean + std * eps`` every time it reads a frame (LDM §3:
the KL autoencoder's posterior), so the cache stores the posterior mean and std of every frame,
fp16, never a sample.

Keys and values (format version ``VERSION``):
- ``__meta__``: JSON — format name and version, VAE identity (sha256 of config + weights) and
  config, scaling factor, latent shape (C, h, w), image size, dtype, layout.
- ``<clip_id>`` (utf-8): a 64-byte header then the payload.
  header: magic ``b"TLAT"``, uint32 n_frames, uint32 crc32 of the payload, uint32 reserved (0),
  32 bytes sha256 of the clip's ``frames.mp4`` (what it was encoded from), 16 bytes zero.
  payload: float16 (T, 2, C, h, w) little-endian, ``[:, 0]`` = mean, ``[:, 1]`` = std; a frame's
  mean and std are adjacent, so a reader copies only the frames it needs.

One key per clip (not per frame): a 4x32x32 frame pair is 16 KB, which LMDB would spill into five
4 KB pages per key (FINDINGS "Media and storage"); packed, a 75-frame clip is one 1.2 MB value.
Writers commit many clips per transaction; readers open the environment read-only without the
lock file, once per process (``LatentCache`` is safe to hand to DataLoader workers).
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from talk.core.errors import TalkError

FORMAT = "talk-latent-cache"
VERSION = 1
META_KEY = b"__meta__"
MAGIC = b"TLAT"
HEADER = struct.Struct("<4sIII32s16x")  # magic, n_frames, crc32(payload), reserved, sha256(frames.mp4)
DTYPE = np.dtype("<f2")
LAYOUT = "(T, 2, C, h, w) float16: [:, 0] posterior mean, [:, 1] posterior std (unscaled)"
DB_FILES = {"data.mdb", "lock.mdb"}
KEPT = {"params.yaml"}  # the stage's resolved config, beside the database
STAGE = "cache-latents"  # the command that writes a cache


class DamagedCache(TalkError):
    """The LMDB files cannot be read (truncated, zeroed, garbled): cache_latents rebuilds, readers stop."""


def make_meta(identity: str, vae_config: dict, scaling_factor: float, latent_shape: Sequence[int],
              image_size: int) -> dict[str, Any]:
    """The ``__meta__`` record of a cache made with one VAE."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "vae_identity": identity,
        "vae_config": {k: v for k, v in vae_config.items() if not k.startswith("_")},
        "scaling_factor": float(scaling_factor),
        "latent_shape": [int(v) for v in latent_shape],
        "image_size": int(image_size),
        "dtype": "float16",
        "layout": LAYOUT,
    }


def file_digest(path: Path) -> bytes:
    """sha256 (32 raw bytes) of a file: which frames.mp4 a cache entry was encoded from."""
    from talk.core.fs import sha256_file

    return bytes.fromhex(sha256_file(path))


def pack(mean: np.ndarray, std: np.ndarray, source: bytes) -> bytes:
    """(T, C, h, w) mean and std -> one value (header + fp16 (T, 2, C, h, w) payload)."""
    mean = np.asarray(mean)
    std = np.asarray(std)
    if mean.shape != std.shape or mean.ndim != 4:
        raise ValueError(f"pack: mean {mean.shape} and std {std.shape} must be equal (T, C, h, w)")
    payload = np.stack([mean, std], axis=1).astype(DTYPE).tobytes()  # (T, 2, C, h, w)
    return HEADER.pack(MAGIC, len(mean), zlib.crc32(payload), 0, source) + payload


def header(buf) -> tuple[int, int, bytes]:
    """-> (n_frames, crc32, source digest) of a value; ValueError when it is not one."""
    if len(buf) < HEADER.size:
        raise ValueError(f"value of {len(buf)} bytes is shorter than the header")
    magic, n, crc, _, source = HEADER.unpack_from(buf, 0)
    if magic != MAGIC:
        raise ValueError(f"bad magic {bytes(magic)!r}")
    return n, crc, bytes(source)


def unpack(buf, shape: Sequence[int]) -> np.ndarray:
    """A value -> its payload as a (T, 2, C, h, w) float16 view (no copy)."""
    n, _, _ = header(buf)
    count = n * 2 * int(np.prod(shape))
    if len(buf) != HEADER.size + count * DTYPE.itemsize:
        raise ValueError(f"value holds {len(buf)} bytes, {n} frames of {tuple(shape)} need {HEADER.size + count * 2}")
    return np.frombuffer(buf, DTYPE, count=count, offset=HEADER.size).reshape(n, 2, *shape)


def check_value(buf, shape: Sequence[int], n_frames: int | None = None) -> list[str]:
    """Problems of one value (empty when it is sound): header, size, checksum, finite, std >= 0."""
    try:
        n, crc, _ = header(buf)
        arr = unpack(buf, shape)
    except ValueError as e:
        return [str(e)]
    problems = []
    if zlib.crc32(memoryview(buf)[HEADER.size:]) != crc:
        problems.append("checksum mismatch")
    if n_frames is not None and n != n_frames:
        problems.append(f"{n} frames, the manifest says {n_frames}")
    if not np.isfinite(arr).all():
        problems.append("NaN or infinite values")
    elif (arr[:, 1] < 0).any():
        problems.append("negative std")
    return problems


def is_cache_dir(path: Path) -> bool:
    return (Path(path) / "data.mdb").is_file()


# LMDB allows one open environment per file per process (py-lmdb refuses a second open, and its
# registry survives fork): every user here goes through env().
_ENVS: dict[str, tuple[int, Any, bool]] = {}  # realpath -> (pid, environment, readonly)
_INHERITED: list = []  # writable environments a forked child inherited: never used nor closed


def env(path: Path, write: bool = False, map_size: int = 1 << 26):
    """This process's environment of ``path``: read-only without the lock file unless ``write``."""
    import lmdb

    key = os.path.realpath(path)
    entry = _ENVS.get(key)
    if entry is not None and entry[0] != os.getpid():  # inherited through fork (a DataLoader worker)
        if entry[2]:
            entry[1].close()  # read-only without a lock file: closing only unmaps this process's copy
        else:
            _INHERITED.append(entry[1])  # closing would clear the parent's reader slots
        entry = None
    if entry is not None and not (write and entry[2]):
        return entry[1]
    if entry is not None:
        entry[1].close()
    data = Path(path) / "data.mdb"
    try:
        if write:
            e = lmdb.open(str(path), map_size=map_size, subdir=True, readahead=False, sync=True, metasync=True)
        else:
            e = lmdb.open(str(path), readonly=True, lock=False, readahead=False, max_readers=512, subdir=True, create=False)
    except lmdb.Error as err:
        raise DamagedCache(f"{data}: not a readable LMDB database ({type(err).__name__}); rebuild it with `talk {STAGE}`") from None
    _check_size(e, data)
    _ENVS[key] = (os.getpid(), e, not write)
    return e


def _check_size(e, data: Path) -> None:
    """A truncated data.mdb: its meta page names pages past the end of the file (reading them would
    crash the process, so it is refused here)."""
    need = (e.info()["last_pgno"] + 1) * e.stat()["psize"]
    if data.is_file() and data.stat().st_size < need:
        e.close()
        raise DamagedCache(f"{data}: truncated ({data.stat().st_size} of {need} bytes); rebuild it with `talk {STAGE}`")


def close_env(path: Path) -> None:
    entry = _ENVS.pop(os.path.realpath(path), None)
    if entry is not None and entry[0] == os.getpid():
        entry[1].close()


def read_meta_of(env) -> dict | None:
    with env.begin() as txn:
        raw = txn.get(META_KEY)
    if raw is None:
        return None
    try:
        meta = json.loads(bytes(raw))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return meta if isinstance(meta, dict) else None


def meta_mismatch(meta: dict | None, identity: str | None = None) -> str | None:
    """Why a cache's ``__meta__`` is unusable here (None when it is fine)."""
    if meta is None:
        return "no readable __meta__ record"
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        return f"format {meta.get('format')!r} version {meta.get('version')!r}, this code reads {FORMAT!r} version {VERSION}"
    if identity is not None and meta.get("vae_identity") != identity:
        return f"made with VAE {str(meta.get('vae_identity'))[:12]}, the configured VAE is {identity[:12]}"
    return None


class LatentCache:
    """Read-only access to a latent cache; the LMDB environment opens lazily once per process.

    ``identity``: the VAE identity the caller decodes with; a cache made with another VAE or
    another format version is a TalkError.
    """

    def __init__(self, path: Path | str, identity: str | None = None):
        self.path = Path(path)
        if not is_cache_dir(self.path):
            raise TalkError(f"no latent cache at {self.path} (run `talk cache-latents`)")
        meta = read_meta_of(self.env)
        why = meta_mismatch(meta, identity)
        if why is not None:
            raise TalkError(f"latent cache {self.path}: {why}; re-run `talk cache-latents`")
        self.meta: dict[str, Any] = meta
        self.shape: tuple[int, int, int] = tuple(meta["latent_shape"])  # (C, h, w)
        self.scaling_factor: float = float(meta["scaling_factor"])
        self.identity: str = meta["vae_identity"]

    @property
    def env(self):
        """Opened lazily once per process (a forked or spawned DataLoader worker opens its own)."""
        return env(self.path)

    def keys(self) -> list[str]:
        with self.env.begin() as txn:
            return [bytes(k).decode() for k in txn.cursor().iternext(values=False) if bytes(k) != META_KEY]

    def raw(self, clip_id: str) -> bytes | None:
        with self.env.begin() as txn:
            v = txn.get(clip_id.encode())
        return None if v is None else bytes(v)

    def n_frames(self, clip_id: str) -> int:
        buf = self.raw(clip_id)
        if buf is None:
            raise TalkError(f"clip {clip_id} is not in the latent cache {self.path}")
        return header(buf)[0]

    def read(self, clip_id: str, frames: Iterable[int] | None = None) -> np.ndarray:
        """float16 (n, 2, C, h, w) posterior [mean, std] of ``frames`` (all when None); a copy."""
        with self.env.begin(buffers=True) as txn:
            buf = txn.get(clip_id.encode())
            if buf is None:
                raise TalkError(f"clip {clip_id} is not in the latent cache {self.path}")
            try:
                arr = unpack(buf, self.shape)  # view into the memory map, valid inside the transaction
            except ValueError as e:
                raise TalkError(f"latent cache {self.path}: the entry of clip {clip_id} is damaged ({e}); "
                                f"rebuild it with `talk {STAGE}`") from None
            return arr.copy() if frames is None else arr[np.asarray(list(frames), dtype=np.intp)]


class CacheWriter:
    """Batched, resumable writes: each ``put`` is one transaction; the map grows when full."""

    def __init__(self, path: Path | str, meta: dict, map_size: int = 1 << 26):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.env = env(self.path, write=True, map_size=map_size)
        old = read_meta_of(self.env)
        if old is None:
            self._txn(lambda txn: txn.put(META_KEY, json.dumps(meta).encode()))
        elif meta_mismatch(old, meta["vae_identity"]) or old.get("latent_shape") != meta["latent_shape"]:
            raise TalkError(f"latent cache {self.path}: {meta_mismatch(old, meta['vae_identity']) or 'other latent shape'}")
        self.meta = meta

    def _txn(self, fn) -> None:
        """Run ``fn(txn)`` in one write transaction; on MapFullError double the map and retry."""
        import lmdb

        while True:
            try:
                with self.env.begin(write=True) as txn:
                    fn(txn)
                return
            except lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)

    def entries(self) -> dict[str, tuple[int, bytes] | None]:
        """clip_id -> (n_frames, source digest) of every entry; None for an unsound one (which a
        resumed run re-encodes)."""
        out = {}
        shape = self.meta["latent_shape"]
        with self.env.begin(buffers=True) as txn:
            for k, v in txn.cursor():
                if bytes(k) == META_KEY:
                    continue
                sound = not check_value(v, shape)
                n, _, source = header(v) if sound else (0, 0, b"")
                out[bytes(k).decode()] = (n, source) if sound else None
        return out

    def put(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Write several clips in one transaction."""
        def fn(txn):
            for key, value in items:
                txn.put(key.encode(), value)

        if items:
            self._txn(fn)

    def delete(self, keys: Iterable[str]) -> None:
        keys = list(keys)

        def fn(txn):
            for k in keys:
                txn.delete(k.encode())

        if keys:
            self._txn(fn)

    def size_bytes(self) -> int:
        info, stat = self.env.info(), self.env.stat()
        return (info["last_pgno"] + 1) * stat["psize"]

    def close(self) -> None:
        close_env(self.path)


def remove_cache(path: Path) -> None:
    """Delete a cache folder holding only LMDB files (refuses anything else)."""
    path = Path(path)
    close_env(path)
    other = [p.name for p in path.iterdir() if p.name not in DB_FILES | KEPT]
    if other:
        raise TalkError(f"{path} holds files other than an LMDB cache ({', '.join(sorted(other)[:3])}); not deleting it")
    for name in DB_FILES:
        (path / name).unlink(missing_ok=True)


def verify(path: Path | str, expected: dict[str, int], identity: str | None = None) -> list[str]:
    """Every problem of a cache, one line each: meta, every expected clip (id -> n_frames)
    present and sound (header, size, checksum, finite, std >= 0), no unexpected clips."""
    path = Path(path)
    if not is_cache_dir(path):
        return [f"no latent cache at {path}"]
    try:
        e = env(path)
    except DamagedCache as err:
        return [f"data.mdb: {str(err).split(': ', 1)[1]}"]
    why = meta_mismatch(read_meta_of(e), identity)
    if why is not None:
        return [f"__meta__: {why}"]
    shape = read_meta_of(e)["latent_shape"]
    problems, seen = [], set()
    with e.begin(buffers=True) as txn:
        for k, v in txn.cursor():
            key = bytes(k)
            if key == META_KEY:
                continue
            clip = key.decode(errors="replace")
            seen.add(clip)
            if clip not in expected:
                problems.append(f"{clip}: not in the manifest")
                continue
            problems.extend(f"{clip}: {p}" for p in check_value(v, shape, expected[clip]))
    problems.extend(f"{clip}: missing" for clip in expected if clip not in seen)
    return problems


# --------------------------------------------------------------------------------------------
# Filling a cache from the crops (the cache_latents stage's work)


def encode_clip(vae, path: Path, size: int, batch: int, autocast: str) -> tuple:
    """Posterior mean and std, float32 (T, C, h, w) numpy, of every frame of a crop video,
    decoded and encoded ``batch`` frames at a time (memory bounded for long clips)."""
    from talk.artifacts.vae import encode_frames
    from talk.media import io as media

    means, stds, chunk = [], [], []

    def flush() -> None:
        frames = np.stack(chunk)  # (B, S, S, 3) uint8
        if frames.shape[1:] != (size, size, 3):
            raise TalkError(f"{path}: frames are {frames.shape[2]}x{frames.shape[1]}, model.image_size is {size}")
        m, s = encode_frames(vae, frames, batch, autocast)
        means.append(m.numpy())
        stds.append(s.numpy())
        chunk.clear()

    try:  # a damaged crop would shift every later frame against its landmarks: an error
        for frame in media.iter_video(path, fps=None, strict=True):
            chunk.append(frame)
            if len(chunk) == batch:
                flush()
    except TalkError as e:
        if "damaged" not in str(e):
            raise
        raise TalkError(f"{e}; re-run `talk crop-align`") from None
    if chunk:
        flush()
    if not means:
        raise TalkError(f"{path}: no video frames")
    return np.concatenate(means), np.concatenate(stds)


def open_for_update(out: Path, identity: str, shape: Sequence[int]) -> None:
    """Remove a cache at ``out`` that cannot be continued: made with another VAE, format or latent
    shape, or damaged LMDB files (a warning each; the clips are encoded again)."""
    from talk.core.runtime import log

    if not is_cache_dir(out):
        return
    try:
        old = read_meta_of(env(out))
        why = meta_mismatch(old, identity) or (None if old["latent_shape"] == list(shape) else "other latent shape")
    except DamagedCache as e:
        why = str(e).split("; ")[0]
    if why is not None:
        log.warning("cache_latents: rebuilding %s (%s)", out, why)
        remove_cache(out)


def update(out: Path, crops: Path, vae_path: Path, size: int, device, batch_size: int, autocast: str,
           commit_mb: float, map_size_mb: int) -> dict[str, Any]:
    """Encode every clip of the crop manifest not cached yet (or changed) with the VAE of
    ``vae_path`` and commit in batches; prune clips no longer in the manifest. Returns counts."""
    import math
    import time

    from talk.artifacts.vae import load_vae
    from talk.core.runtime import progress
    from talk.data.crops import clip_file, read_manifest

    df = read_manifest(crops)
    expected = {c: int(n) for c, n in zip(df["clip_id"], df["n_frames"])}
    vae, scaling, identity = load_vae(vae_path, device)
    down = 2 ** (len(vae.config.block_out_channels) - 1)
    if size % down:
        raise TalkError(f"model.image_size {size} is not a multiple of the VAE's downsampling {down}")
    shape = (int(vae.config.latent_channels), size // down, size // down)  # (C, h, w)
    meta = make_meta(identity, dict(vae.config), scaling, shape, size)
    out = Path(out)
    open_for_update(out, identity, shape)
    frame_bytes = 2 * 2 * math.prod(shape)  # mean + std, fp16
    estimate = int(1.25 * sum(expected.values()) * (frame_bytes + 64)) + (1 << 20)
    writer = CacheWriter(out, meta, map_size_mb << 20 if map_size_mb else max(1 << 24, estimate))
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
                path = clip_file(crops, row, "frames.mp4")
                digest = file_digest(path)
                if entries.get(clip) == (n, digest):
                    skipped += 1
                    bar.advance(task, n)
                    continue
                mean, std = encode_clip(vae, path, size, batch_size, autocast)  # (T, C, h, w)
                if len(mean) != n:
                    raise TalkError(f"{path}: {len(mean)} frames, the crop manifest says {n}; re-run `talk crop-align`")
                value = pack(mean, std, digest)
                pending.append((clip, value))
                pending_bytes += len(value)
                if pending_bytes >= commit_mb * 2**20:
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
    return {"encoded": encoded, "skipped": skipped, "removed": len(stale), "frames": frames_done,
            "wall_s": wall, "identity": identity, "db_bytes": db_bytes, "shape": shape, "scaling": scaling}


def problems_table(problems: list[str], limit: int = 50):
    """The problems ``verify`` found, as a rich table (clip, problem)."""
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


def summary_table(out: Path, s: dict):
    """What ``update`` did, as a rich table."""
    from rich.table import Table

    table = Table(title=f"cache_latents -> {out}")
    table.add_column("item")
    table.add_column("value", justify="right")
    table.add_row("clips (encoded / skipped / removed)", f"{s['encoded']} / {s['skipped']} / {s['removed']}")
    table.add_row("frames encoded", str(s["frames"]))
    table.add_row("speed", f"{s['frames'] / s['wall_s']:.0f} frames/s" if s["frames"] and s["wall_s"] > 0 else "-")
    table.add_row("latent", f"{s['shape']} fp16 mean + std, scaling factor {s['scaling']:.4f}")
    table.add_row("database", f"{s['db_bytes'] / 2**20:.1f} MB")
    table.add_row("VAE", s["identity"][:16])
    return table
