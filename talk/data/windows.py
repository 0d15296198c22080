"""The diffusion training data: latent cache + Whisper features + crop manifest -> samples.

One item per (clip, target start frame t), t = 0 .. T - F. Each item (DICE-Talk §3.1 / SVP §3:
reference latent by channel concatenation, motion frames, audio window per frame):

- ``ref``    (C, h, w)       latent of a random other frame of the same clip (outside the target)
- ``target`` (F, C, h, w)    latents of frames t .. t+F-1
- ``motion`` (M, C, h, w)    latents of frames t-M .. t-1, frame 0 repeated before the clip start
- ``audio``  (F, k, L, D)    float32 Whisper states: for target frame u the k audio frames
  ``2u + 1 - ceil(k/2) .. 2u + k - ceil(k/2)`` (k = 10: 2u-4 .. 2u+5), centred on video frame u's
  own audio frames 2u, 2u+1 (50 Hz; docs/pipeline.md), indices clamped to the clip (edge frames
  repeated)
- ``landmarks`` (F, 68, 2) float32, only with ``landmarks=True``: the target frames' dlib-68
  landmarks from the crop folder, in fractions of the crop side (x, y in 0..1)
- ``emotion`` int (models.emotions.emotion_id, -1 none), ``level`` int (0 none), ``speaker`` int
  (index into the sorted speakers of the whole manifest), ``clip_id`` str, ``frame`` int (t).

Latents are fresh posterior samples ``(mean + std * eps) * scaling_factor`` with eps drawn from a
per-item generator seeded by (seed, epoch, index): items do not depend on batch size, worker count
or order. ``InfiniteSampler`` gives a resumable shuffled order (edm2's, restarted at ``start_idx``);
it yields (epoch, index) pairs, which ``LatentDataset.__getitem__`` accepts as well as plain indices
(epoch = ``set_epoch``'s, default 0).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from talk.audio.features import check_feature_frames
from talk.core.errors import TalkError
from talk.data.latent_cache import LatentCache
from talk.models.emotions import emotion_id

__all__ = ["LatentDataset", "InfiniteSampler", "audio_window_indices"]


def audio_window_indices(frames: np.ndarray, k: int, n_audio: int) -> np.ndarray:
    """(F,) video frames -> (F, k) Whisper frame indices centred on each, clamped to [0, n_audio)."""
    start = 2 * np.asarray(frames)[:, None] + 1 - (k + 1) // 2  # (F, 1)
    return np.clip(start + np.arange(k)[None], 0, n_audio - 1)


class LatentDataset(torch.utils.data.Dataset):
    """Diffusion training samples from the latent cache; safe in DataLoader workers (lazy LMDB)."""

    def __init__(
        self,
        cache: Path | str,
        audio_features: Path | str,
        crops: Path | str,
        splits: Sequence[str] | str = ("train",),
        target_frames: int = 1,
        motion_frames: int = 2,
        audio_window: int = 10,
        seed: int = 0,
        vae_identity: str | None = None,
        landmarks: bool = False,
        image_size: int = 0,
    ):
        from talk.data.crops import read_manifest

        if isinstance(splits, str):
            splits = (splits,)
        self.cache = LatentCache(cache, identity=vae_identity)
        self.audio_dir = Path(audio_features)
        self.F, self.M, self.k = int(target_frames), int(motion_frames), int(audio_window)
        self.seed = int(seed)
        self.epoch = 0
        df = read_manifest(Path(crops))
        self.speakers: list[str] = sorted(set(df["speaker"].astype(str)))
        df = df[df["split"].isin(splits)].reset_index(drop=True)
        if len(df) == 0:
            raise TalkError(f"no clips of split {', '.join(splits)} in {Path(crops) / 'manifest.csv'}")
        cached = set(self.cache.keys())
        missing = [c for c in df["clip_id"] if c not in cached]
        if missing:
            raise TalkError(f"{len(missing)} clip(s) missing from the latent cache {cache} (e.g. {missing[0]}); "
                            f"run `talk cache-latents`")
        self.clip_ids: list[str] = list(df["clip_id"])
        self.crops = Path(crops)
        self.crop_dirs: list[str] = [str(d or "") for d in df["crop_dir"]]
        if landmarks and image_size <= 0:
            raise ValueError("landmarks=True needs the crop side (image_size)")
        self.with_landmarks, self.image_size = bool(landmarks), int(image_size)
        self._marks: dict[str, np.ndarray] = {}
        self.n_frames = np.array([int(n) for n in df["n_frames"]], dtype=np.int64)
        short = [c for c, n in zip(self.clip_ids, self.n_frames) if n < self.F]
        if short:
            raise TalkError(f"clip {short[0]} has fewer frames than model.target_frames={self.F}")
        self.emotion = np.array([emotion_id(e) for e in df["emotion"]], dtype=np.int64)
        self.level = np.array([int(v) for v in df["level"]], dtype=np.int64)
        index = {s: i for i, s in enumerate(self.speakers)}
        self.speaker = np.array([index[str(s)] for s in df["speaker"]], dtype=np.int64)
        starts = self.n_frames - self.F + 1  # items per clip
        self.offsets = np.concatenate([[0], np.cumsum(starts)])  # item i -> clip searchsorted(offsets, i)
        self._audio: dict[str, np.ndarray] = {}
        self._audio_pid: int | None = None
        shapes = {self._features(c).shape[1:] for c in self.clip_ids[:1]}
        self.audio_shape: tuple[int, int] = shapes.pop()  # (L, D)

    @classmethod
    def from_model(cls, model, cache: Path | str, audio_features: Path | str, crops: Path | str,
                   splits: Sequence[str] | str = ("train",), seed: int = 0, vae_identity: str | None = None,
                   landmarks: bool = False):
        """F, M, k from the ``model`` section (target_frames, motion_frames, audio_window; image_size
        for the landmarks)."""
        return cls(cache, audio_features, crops, splits, model.target_frames, model.motion_frames,
                   model.audio_window, seed, vae_identity, landmarks, model.image_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _features(self, clip: str) -> np.ndarray:
        """(2T, L, D) float16, memory-mapped once per process."""
        if self._audio_pid != os.getpid():
            self._audio, self._audio_pid = {}, os.getpid()
        a = self._audio.get(clip)
        if a is None:
            path = self.audio_dir / f"{clip}.npy"
            if not path.is_file():
                raise TalkError(f"audio features of clip {clip} not found at {path}; run `talk audio-features`")
            a = np.load(path, mmap_mode="r", allow_pickle=False)
            if a.ndim != 3:
                raise TalkError(f"{path}: expected (2T, L, D) features, got shape {a.shape}")
            self._audio[clip] = a
        return a

    def _landmarks(self, c: int) -> np.ndarray:
        """(T, 68, 2) landmarks of clip position c, memory-mapped once per process."""
        from talk.data.crops import clip_folder

        clip = self.clip_ids[c]
        if self._audio_pid != os.getpid():
            self._audio, self._marks, self._audio_pid = {}, {}, os.getpid()
        a = self._marks.get(clip)
        if a is None:
            path = clip_folder(self.crops, self.crop_dirs[c], clip) / "landmarks.npy"
            if not path.is_file():
                raise TalkError(f"clip {clip}: {path} not found; re-run `talk crop-align`")
            a = np.load(path, mmap_mode="r", allow_pickle=False)
            if a.ndim != 3 or a.shape[1:] != (68, 2) or len(a) != int(self.n_frames[c]):
                raise TalkError(f"{path}: expected ({int(self.n_frames[c])}, 68, 2) landmarks, got {a.shape}; "
                                f"re-run `talk crop-align`")
            self._marks[clip] = a
        return a

    def locate(self, index: int) -> tuple[int, int]:
        """Item index -> (clip position, first target frame t)."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        c = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return c, int(index - self.offsets[c])

    def __getitem__(self, item) -> dict:
        epoch, index = (int(item[0]), int(item[1])) if isinstance(item, (tuple, list)) else (self.epoch, int(item))
        c, t = self.locate(index)
        clip, n = self.clip_ids[c], int(self.n_frames[c])
        g = np.random.default_rng([self.seed, epoch, index])  # per-item randomness
        target = np.arange(t, t + self.F)  # (F,)
        motion = np.maximum(np.arange(t - self.M, t), 0)  # (M,) frame 0 repeated at the clip start
        others = n - self.F
        r = int(g.integers(others)) if others > 0 else int(g.integers(n))
        ref = r + self.F if others > 0 and r >= t else r  # uniform over frames outside [t, t+F)
        frames = np.concatenate([[ref], motion, target])  # (1+M+F,)
        post = self.cache.read(clip, frames).astype(np.float32)  # (1+M+F, 2, C, h, w)
        eps = g.standard_normal(post[:, 0].shape, dtype=np.float32)
        z = torch.from_numpy((post[:, 0] + post[:, 1] * eps) * np.float32(self.cache.scaling_factor))
        feats = self._features(clip)
        check_feature_frames(len(feats), n, f"audio features of clip {clip}")
        idx = audio_window_indices(target, self.k, len(feats))  # (F, k)
        audio = torch.from_numpy(np.asarray(feats[idx.reshape(-1)], dtype=np.float32).reshape(*idx.shape, *feats.shape[1:]))
        item = {
            "ref": z[0],  # (C, h, w)
            "motion": z[1 : 1 + self.M],  # (M, C, h, w)
            "target": z[1 + self.M :],  # (F, C, h, w)
            "audio": audio,  # (F, k, L, D)
            "emotion": int(self.emotion[c]),
            "level": int(self.level[c]),
            "speaker": int(self.speaker[c]),
            "clip_id": clip,
            "frame": t,
        }
        if self.with_landmarks:  # (F, 68, 2) in fractions of the crop side
            item["landmarks"] = torch.from_numpy(np.asarray(self._landmarks(c)[target], dtype=np.float32) / self.image_size)
        return item


class InfiniteSampler(torch.utils.data.Sampler):
    """Endless shuffled (epoch, index) pairs, resumable (edm2 training/training_loop.py's idea).

    Position p of the stream is item ``perm_e[p % n]`` of epoch ``e = p // n``, ``perm_e`` a
    permutation seeded by (seed, e); with several ranks, rank r takes positions r, r + R, ...
    ``start_idx`` (samples already consumed by this rank) resumes the same stream mid-way.
    """

    def __init__(self, dataset_or_len, seed: int = 0, start_idx: int = 0, shuffle: bool = True,
                 rank: int = 0, num_replicas: int = 1):
        self.n = dataset_or_len if isinstance(dataset_or_len, int) else len(dataset_or_len)
        if self.n < 1:
            raise TalkError("InfiniteSampler: the dataset is empty")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside 0..{num_replicas - 1}")
        self.seed, self.start_idx, self.shuffle = int(seed), int(start_idx), shuffle
        self.rank, self.num_replicas = rank, num_replicas

    def _perm(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, epoch, 0x5A3]).permutation(self.n)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        p = self.start_idx * self.num_replicas + self.rank  # global stream position
        epoch, perm = -1, None
        while True:
            e = p // self.n
            if e != epoch:
                epoch, perm = e, self._perm(e)
            yield epoch, int(perm[p % self.n])
            p += self.num_replicas
