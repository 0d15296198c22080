"""The ``serve`` section of params.yaml: where `talk serve` listens and what one render may ask for.

The render itself (denoiser, sampling defaults, render loop) is the ``render`` section's, exactly
as `talk render` reads it; this section holds only what a web server adds.
"""

from __future__ import annotations

import dataclasses

from talk.core.params import one_of, rng
from talk.models.emotions import EMOTIONS


@dataclasses.dataclass(frozen=True)
class Config:
    """``serve``: host, port, queue and limits of the local web page, and its first emotion."""

    host: str = "127.0.0.1"  # address the server binds: 127.0.0.1 = this machine only; 0.0.0.0 = every interface (no authentication: only on a trusted network)
    port: int = dataclasses.field(default=7860, metadata=rng(0, 65535))  # TCP port (0: a free one, printed at start)
    concurrency: int = dataclasses.field(default=1, metadata=rng(1, 8))  # renders computed at once; the others wait in the queue in order (each render already uses every base.threads core)
    queue_size: int = dataclasses.field(default=16, metadata=rng(1))  # renders waiting at most; one more is refused with a message
    max_seconds: float = dataclasses.field(default=30.0, metadata=rng(0.1))  # longest speech a render accepts, s
    max_upload_mb: float = dataclasses.field(default=50.0, metadata=rng(0.1))  # largest file one upload may be, MB
    keep_minutes: float = dataclasses.field(default=60.0, metadata=rng(1.0))  # uploads and rendered videos older than this are deleted (all of them when the server stops)
    emotion: str = dataclasses.field(default="happy", metadata=one_of(*EMOTIONS))  # emotion selected when the page opens
