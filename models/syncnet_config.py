"""Architecture config of the talk lip-sync expert (torch-free; the module is in models/syncnet.py).

A field of the ``train_sync`` section of params.yaml (``train_sync.model``), saved with the expert.
"""

from __future__ import annotations

import dataclasses

from talk.models.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class SyncExpertConfig:
    """Audio window <-> mouth window embedder (Wav2Lip's / LatentSync's SyncNet idea, our sizes).

    Video: ``frames`` consecutive mouth crops (the lower half of the aligned face crop, resized to
    ``mouth_size`` x 2 ``mouth_size``, RGB stacked on channels) centred on frame u. Audio: the
    ``audio_window`` Whisper frames (50 Hz) centred on the same frame u, all ``audio_layers``
    states (the window the denoiser sees for frame u: k = 10 covers video frames u-2 .. u+2)."""

    frames: int = dataclasses.field(default=5, metadata={"range": (1, None)})  # W: mouth crops per window, centred on the scored frame (odd)
    audio_window: int = dataclasses.field(default=10, metadata={"range": (1, None)})  # k: Whisper frames (50 Hz) per window, centred on the same frame
    audio_layers: int = dataclasses.field(default=5, metadata={"range": (1, None)})  # L: Whisper hidden states per frame (tiny: embedding + 4 layers)
    audio_dim: int = dataclasses.field(default=384, metadata={"range": (1, None)})  # D: Whisper width (tiny: 384)
    mouth_size: int = dataclasses.field(default=32, metadata={"range": (16, None)})  # px, height of the mouth crop (its width is twice this); a multiple of 16
    width: int = dataclasses.field(default=32, metadata={"range": (4, None)})  # channels of the first conv (x2, x4, x4 deeper); the audio projection's width
    emb_dim: int = dataclasses.field(default=128, metadata={"range": (2, None)})  # size of both embeddings (L2-normalised)

    def validate(self) -> None:
        if self.frames % 2 == 0:
            raise ConfigError(f"train_sync.model.frames must be odd (a window centred on a frame), got {self.frames}")
        if self.mouth_size % 16:
            raise ConfigError(f"train_sync.model.mouth_size must be a multiple of 16, got {self.mouth_size}")
