"""talk: audio-driven, emotion-controllable talking-portrait video (DICE-Talk / SVP), end to end.

The library behind the `talk` command and the DVC stages; docs/architecture.md maps its folders::

    from talk import TalkPipeline
    pipe = TalkPipeline.from_pretrained("artifacts")
    frames = pipe("face.jpg", "speech.wav", emotion="happy", intensity=0.8)   # (T, H, W, 3) uint8
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights load from local paths only; set before anything hub-aware loads
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

__all__ = ["TalkPipeline"]


def __getattr__(name: str):
    if name == "TalkPipeline":  # imported lazily: `talk --help` must not load torch
        from talk.inference.pipeline import TalkPipeline

        return TalkPipeline
    raise AttributeError(f"module 'talk' has no attribute {name!r}")
