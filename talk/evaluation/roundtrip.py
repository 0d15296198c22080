"""The reference crop's VAE round trip (encode -> posterior mean -> decode through the trained
VAE, ``paths.vae``): what the denoiser's output can at best look like, so `evaluate` scores face
sharpness and colour against it (talk/evaluation/metrics/appearance.py).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from talk.artifacts.vae import CONFIG


class RoundTrip:
    """Round trips of reference frames through the VAE at ``path``, memoised by frame content
    (every clip of a speaker shares one neutral reference)."""

    def __init__(self, path: Path):
        from talk.artifacts.vae import load_vae

        self.path = Path(path)
        self.vae, self.scaling, self.identity = load_vae(self.path)
        self._memo: dict[bytes, np.ndarray] = {}

    @classmethod
    def available(cls, path: Path) -> bool:
        """Whether ``path`` holds a VAE artefact at all (a damaged one still fails on load)."""
        return (Path(path) / CONFIG).is_file()

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> its round trip (H, W, 3) uint8."""
        from talk.artifacts.vae import decode_latents, encode_frames, vae_factor
        from talk.evaluation.metrics import few_threads

        frame = np.ascontiguousarray(frame, np.uint8)
        key = hashlib.blake2b(frame.tobytes(), digest_size=16).digest() + bytes(str(frame.shape), "ascii")
        if key not in self._memo:
            f, (h, w) = vae_factor(self.vae), frame.shape[:2]
            padded = np.pad(frame, ((0, -h % f), (0, -w % f), (0, 0)), mode="edge")  # a PatchAutoencoder needs whole blocks
            with few_threads():
                mean, _ = encode_frames(self.vae, padded[None])
                out = decode_latents(self.vae, mean * self.scaling, scaling_factor=self.scaling)[0][:h, :w]
            if out.shape != frame.shape:  # a crop side the VAE's downsampling does not divide
                import cv2

                out = cv2.resize(out, frame.shape[1::-1], interpolation=cv2.INTER_AREA)
            self._memo[key] = out
        return self._memo[key]
