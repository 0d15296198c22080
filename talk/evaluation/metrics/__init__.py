"""Metrics that score generated talking-head clips against real ones (docs/method.md §3, MEAD protocol).

Every function takes aligned crops as (T, H, W, 3) uint8 arrays at 25 fps and/or 16 kHz mono
float32 audio. Feature spaces are named in the metric names (``fid_dlib128``): these numbers are
*not* comparable with papers' Inception FID or I3D FVD.

- ``image``: PSNR, SSIM (11x11 Gaussian window, Wang et al. 2004).
- ``face``: dlib HOG detection, 68 landmarks, 128-d descriptors for every frame of a clip.
- ``distribution``: Fréchet distance, clip-level features (FID / FVD style), CSIM.
- ``landmarks``: M-LMD / F-LMD.
- ``sync``: mouth opening vs loudness correlation and best offset (lip sync without SyncNet), and
  the silent stretches of the audio (mouth closed in pauses).
- ``identity``: dlib-128 descriptor distance to the reference and its drift over a clip.
- ``appearance``: face sharpness (Laplacian variance) and CIELAB ΔE / colour shift over the face
  region, against a reference image (evaluate: the reference crop's VAE round trip).
- ``syncnet``: Sync-C / Sync-D analogues with train_sync's own lip-sync expert (talk expert).
- ``external``: paper-style metrics from user-supplied weights: SyncNet Sync-C / Sync-D,
  Inception FID, ArcFace CSIM.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def few_threads(n: int = 1) -> Iterator[None]:
    """Run small torch linear algebra on ``n`` threads: for matrices of a few hundred rows,
    thread start-up costs more than it saves, and far more on a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
