"""SyncNet (Chung & Zisserman 2016, "Out of time: automated lip sync in the wild"), the network of
joonson/syncnet_python (``SyncNetModel.S``) whose ``syncnet_v2.model`` state dict gives the
Sync-C / Sync-D numbers of talking-head papers.

Layer names and order match that state dict, so ``load_state_dict(strict=True)`` accepts it.
Inputs: 5 consecutive 224x224 face frames (B, 3, 5, 224, 224), BGR, 0..255; 13 MFCCs x 20
frames at 100 Hz (B, 1, 13, 20) covering the same 0.2 s. Outputs: (B, 1024) embeddings each.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv2(cin: int, cout: int, k=(3, 3), p=(1, 1)) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel_size=k, stride=(1, 1), padding=p), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _conv3(cin: int, cout: int, k, s=(1, 1, 1), p=(0, 0, 0)) -> list[nn.Module]:
    return [nn.Conv3d(cin, cout, kernel_size=k, stride=s, padding=p), nn.BatchNorm3d(cout), nn.ReLU(inplace=True)]


class SyncNet(nn.Module):
    """Two-stream audio / lip embedding network (syncnet_python ``S``)."""

    def __init__(self, embed_dim: int = 1024):
        super().__init__()
        self.netcnnaud = nn.Sequential(
            *_conv2(1, 64), nn.MaxPool2d(kernel_size=(1, 1), stride=(1, 1)),  # (B, 64, 13, 20)
            *_conv2(64, 192), nn.MaxPool2d(kernel_size=(3, 3), stride=(1, 2)),  # (B, 192, 11, 9)
            *_conv2(192, 384),
            *_conv2(384, 256),
            *_conv2(256, 256), nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2)),  # (B, 256, 5, 4)
            *_conv2(256, 512, k=(5, 4), p=(0, 0)),  # (B, 512, 1, 1)
        )
        self.netfcaud = nn.Sequential(
            nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim),
        )
        self.netfclip = nn.Sequential(
            nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim),
        )
        self.netcnnlip = nn.Sequential(
            *_conv3(3, 96, (5, 7, 7), s=(1, 2, 2)),  # (B, 96, 1, 109, 109)
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),  # (B, 96, 1, 54, 54)
            *_conv3(96, 256, (1, 5, 5), s=(1, 2, 2), p=(0, 1, 1)),  # (B, 256, 1, 26, 26)
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),  # (B, 256, 1, 13, 13)
            *_conv3(256, 256, (1, 3, 3), p=(0, 1, 1)),
            *_conv3(256, 256, (1, 3, 3), p=(0, 1, 1)),
            *_conv3(256, 256, (1, 3, 3), p=(0, 1, 1)),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),  # (B, 256, 1, 6, 6)
            *_conv3(256, 512, (1, 6, 6)),  # (B, 512, 1, 1, 1)
        )

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        """(B, 1, 13, 20) MFCC windows -> (B, embed_dim)."""
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_lip(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, 5, 224, 224) frame windows -> (B, embed_dim)."""
        return self.netfclip(self.netcnnlip(frames).flatten(1))


def offset_distances(video: torch.Tensor, audio: torch.Tensor, vshift: int) -> torch.Tensor:
    """Distances (N, 2 * vshift + 1) between video embedding i and audio embeddings i - vshift ..
    i + vshift (zero-padded), as syncnet_python's ``calc_pdist``."""
    win = 2 * vshift + 1
    padded = nn.functional.pad(audio, (0, 0, vshift, vshift))  # (N + 2 vshift, D)
    return torch.stack([
        nn.functional.pairwise_distance(video[[i]].repeat(win, 1), padded[i:i + win]) for i in range(len(video))
    ])


def sync_scores(dists: torch.Tensor, vshift: int) -> tuple[float, float, int]:
    """(Sync-C, Sync-D, offset) from ``offset_distances``: the mean distance curve over frames,
    its minimum (Sync-D), median minus minimum (Sync-C) and the offset of the minimum (frames)."""
    mdist = dists.mean(0)  # (2 vshift + 1,)
    minval, minidx = torch.min(mdist, 0)
    conf = torch.median(mdist) - minval
    return float(conf), float(minval), int(vshift - minidx)


# --------------------------------------------------------------------------------------------
# The talk lip-sync expert (trained by `talk train-sync` on the project's own clips)

from talk.models.syncnet_config import SyncExpertConfig  # noqa: E402  (re-exported)


def _down(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(min(8, cout), cout), nn.SiLU()]


class SyncExpert(nn.Module):
    """Mouth window and audio window -> L2-normalised embeddings whose cosine says "in sync".

    Video ``(B, W, 3, H, 2H)`` float in [0, 1] (the W mouth crops of ``SyncExpertConfig``), audio
    ``(B, k, L, D)`` Whisper states. ``logit(v, a)`` = scale * cos(v, a) + bias (learnt), the
    probability of "in sync" under a sigmoid; ``distance`` is the Euclidean distance of the unit
    embeddings (sqrt(2 - 2 cos), 0..2): Sync-D's quantity."""

    def __init__(self, cfg: SyncExpertConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        chans = [3 * cfg.frames, w, 2 * w, 4 * w, 4 * w]
        layers: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:]):
            layers += _down(a, b)
        self.visual = nn.Sequential(*layers, nn.Flatten(),
                                    nn.Linear(4 * w * (cfg.mouth_size // 16) * (cfg.mouth_size // 8), 2 * cfg.emb_dim),
                                    nn.SiLU(), nn.Linear(2 * cfg.emb_dim, cfg.emb_dim))
        self.audio_norm = nn.LayerNorm(cfg.audio_dim, elementwise_affine=False)
        self.audio_proj = nn.Linear(cfg.audio_layers * cfg.audio_dim, 2 * w)
        self.audio = nn.Sequential(
            nn.SiLU(), nn.Conv1d(2 * w, 2 * w, 3, padding=1), nn.GroupNorm(min(8, 2 * w), 2 * w), nn.SiLU(),
            nn.Conv1d(2 * w, 2 * w, 3, padding=1), nn.SiLU(), nn.Flatten(),
            nn.Linear(2 * w * cfg.audio_window, 2 * cfg.emb_dim), nn.SiLU(), nn.Linear(2 * cfg.emb_dim, cfg.emb_dim))
        self.log_scale = nn.Parameter(torch.tensor(float(torch.log(torch.tensor(5.0)))))
        self.bias = nn.Parameter(torch.zeros(()))

    def embed_video(self, mouths: torch.Tensor) -> torch.Tensor:
        """(B, W, 3, H, 2H) in [0, 1] -> (B, emb_dim), unit length."""
        b = mouths.shape[0]
        x = (mouths.reshape(b, -1, *mouths.shape[-2:]) - 0.5) * 2
        return nn.functional.normalize(self.visual(x), dim=-1)

    def embed_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, k, L, D) Whisper states -> (B, emb_dim), unit length."""
        x = self.audio_proj(self.audio_norm(audio.float()).flatten(2))  # (B, k, 2w)
        return nn.functional.normalize(self.audio(x.transpose(1, 2)), dim=-1)

    def logit(self, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Unit embeddings (B, E) x (B, E) -> (B,) logits of "in sync"."""
        return self.log_scale.exp() * (v * a).sum(-1) + self.bias

    @staticmethod
    def distance(v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Unit embeddings -> Euclidean distance, broadcasting."""
        return (2 - 2 * (v * a).sum(-1)).clamp_min(0).sqrt()


def mouth_crops(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Aligned face crops (..., 3, S, S) in [0, 1] -> their lower halves resized to (..., 3, size, 2 size)."""
    s = frames.shape[-1]
    lower = frames[..., s // 2:, :]
    lead = lower.shape[:-3]
    out = nn.functional.interpolate(lower.reshape(-1, *lower.shape[-3:]), size=(size, 2 * size), mode="area")
    return out.reshape(*lead, 3, size, 2 * size)


def audio_window_index(centres: torch.Tensor, k: int, n_audio: int) -> torch.Tensor:
    """(N,) video frames -> (N, k) Whisper frame indices centred on each (talk.data.windows' rule:
    k = 10 gives 2u-4 .. 2u+5), clamped to [0, n_audio)."""
    start = 2 * centres[:, None] + 1 - (k + 1) // 2
    return (start + torch.arange(k)[None]).clamp(0, n_audio - 1)


def clip_embeddings(expert: SyncExpert, mouths, audio, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Every window of a clip: mouths (T, 3, h, 2h) in [0, 1] and Whisper states (2T, L, D) ->
    video and audio embeddings (N, E) each, N = T - W + 1, window i centred on frame i + W // 2."""
    mouths = torch.as_tensor(mouths, dtype=torch.float32)
    audio = torch.as_tensor(audio, dtype=torch.float32)
    w, k = expert.cfg.frames, expert.cfg.audio_window
    n = len(mouths) - w + 1
    if n < 1:
        return torch.zeros(0, expert.cfg.emb_dim), torch.zeros(0, expert.cfg.emb_dim)
    centres = torch.arange(n) + w // 2
    vs, as_ = [], []
    with torch.no_grad():
        for i in range(0, n, batch):
            c = centres[i:i + batch]
            vs.append(expert.embed_video(torch.stack([mouths[j - w // 2:j + w // 2 + 1] for j in c.tolist()])))
            as_.append(expert.embed_audio(audio[audio_window_index(c, k, len(audio))]))
    return torch.cat(vs), torch.cat(as_)


def offset_curve(video: torch.Tensor, audio: torch.Tensor, max_offset: int) -> torch.Tensor:
    """(2N + 1,) mean distance of video window i to audio window i - k, k = -N .. N, over the
    windows where both exist (no padding); k > 0: the mouth lags the sound."""
    n = len(video)
    out = []
    for k in range(-max_offset, max_offset + 1):
        lo, hi = max(0, k), min(n, n + k)
        out.append(SyncExpert.distance(video[lo:hi], audio[lo - k:hi - k]).mean() if hi > lo else torch.tensor(float("nan")))
    return torch.stack(out)


def expert_sync_scores(expert: SyncExpert, mouths, audio, max_offset: int) -> dict:
    """Sync-C / Sync-D analogues of one clip with the talk expert, after SyncNet's evaluation
    (syncnet_python ``evaluate``): the distance curve over offsets -N .. N (mean over windows);
    Sync-D = its minimum (the distance at the best offset), ``offset`` = where that is, and
    Sync-C = its median minus its value at offset 0 (SyncNet's confidence, median minus minimum,
    taken at offset 0: a generated clip must be in sync where it is, not at some offset, and a clip
    in sync only past the search would otherwise score the slope of its curve as confidence);
    ``d0`` = the distance at offset 0 and ``curve`` the whole curve."""
    v, a = clip_embeddings(expert, mouths, audio)
    if len(v) <= 2 * max_offset:
        nan = float("nan")
        return {"sync_c": nan, "sync_d": nan, "offset": nan, "d0": nan, "curve": [nan] * (2 * max_offset + 1)}
    curve = offset_curve(v, a, max_offset)
    i = int(torch.argmin(curve))
    return {"sync_c": float(curve.median() - curve[max_offset]), "sync_d": float(curve[i]), "offset": i - max_offset,
            "d0": float(curve[max_offset]), "curve": curve.tolist()}
