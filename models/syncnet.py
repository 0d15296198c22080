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
