"""Process-wide set-up shared by every stage: seeds, threads, device, console, progress bars."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterable, Iterator
from typing import TypeVar

import numpy as np
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

console = Console(stderr=True)
log = logging.getLogger("talk")
T = TypeVar("T")


def setup(base) -> None:
    """Apply the ``base`` section: logging, seeds, torch threads, deterministic kernels."""
    import os

    import torch

    if not log.handlers:
        handler = RichHandler(console=console, show_path=False, show_time=False, markup=False)
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(base.log_level.upper())
    seed_everything(base.seed)
    if base.threads > 0:
        torch.set_num_threads(base.threads)
    # Some kernels accumulate in a thread-dependent order (on CPU: the backward of indexing, e.g. a
    # VQ codebook lookup): the same run twice differs in the last bits, and training amplifies it.
    # Deterministic mode picks ordered kernels (warn_only: ops without one warn instead of failing).
    if base.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS on CUDA
    torch.use_deterministic_algorithms(base.deterministic, warn_only=True)


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def device(name: str = "auto"):
    """``auto`` picks CUDA when present, then MPS, else CPU."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def progress(*extra_columns) -> Progress:
    """A rich progress bar with count, elapsed and remaining time (and any extra columns)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal and os.environ.get("TALK_PROGRESS", "") != "1",
    )


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress() as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
