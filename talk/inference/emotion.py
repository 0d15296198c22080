"""Emotion conditioning arithmetic (DICE-Talk §3.1-3.2): a Gaussian per emotion from the prior's
presets; intensity moves it from neutral along the level presets, a blend mixes presets, a reference
clip gives its own Gaussian."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from talk.core.errors import TalkError
from talk.models.emotions import EMOTIONS


def check_emotion(name: str) -> str:
    """A valid emotion label, or TalkError listing the valid ones."""
    key = str(name).strip().lower()
    if key not in EMOTIONS:
        raise TalkError(f"unknown emotion '{name}' (valid: {', '.join(EMOTIONS)})")
    return key


def check_emotions(names: Sequence[str], where: str) -> None:
    for n in names:
        if n not in EMOTIONS:
            raise TalkError(f"{where}: unknown emotion '{n}' (valid: {', '.join(EMOTIONS)})")


def parse_blend(text: str) -> list[tuple[str, float]]:
    """``"happy:0.6,surprised:0.4"`` -> [("happy", 0.6), ("surprised", 0.4)].

    Weights are non-negative; when they sum to less than 1 the rest is neutral, when they sum to
    more than 1 they are normalised. A name without a weight counts 1.
    """
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise TalkError(f"--blend '{text}': expected emotion:weight pairs, e.g. happy:0.6,surprised:0.4")
    out: dict[str, float] = {}
    for part in parts:
        name, sep, weight = part.partition(":")
        emo = check_emotion(name)
        try:
            w = float(weight) if sep else 1.0
        except ValueError:
            raise TalkError(f"--blend: weight '{weight}' of {emo} is not a number") from None
        if not math.isfinite(w) or w < 0:
            raise TalkError(f"--blend: weight of {emo} must be a non-negative number, got {weight}")
        out[emo] = out.get(emo, 0.0) + w
    total = sum(out.values())
    if total <= 0:
        raise TalkError(f"--blend '{text}': the weights sum to 0")
    if total > 1:
        out = {k: v / total for k, v in out.items()}
    return list(out.items())


def intensity_anchors(presets: dict, emotion: str, level: int | None = None) -> list[tuple[float, Any, Any]]:
    """Points (intensity, mean, logvar) along which an emotion's strength is interpolated.

    0 is the neutral preset. With level presets ``emotion/<e>/<l>`` (MEAD's three intensities), level
    l sits at l/3; without them the emotion preset sits at 1. ``level`` pins one level at 1.
    """
    def get(key):
        if key not in presets:
            return None
        mean, logvar = presets[key]
        return mean, logvar

    neutral = get("emotion/neutral")
    if neutral is None:
        raise TalkError("the prior has no neutral preset (emotion/neutral): it cannot place intensities")
    if emotion == "neutral":
        return [(0.0, *neutral), (1.0, *neutral)]
    if level is not None:
        pinned = get(f"emotion/{emotion}/{level}") or get(f"emotion/{emotion}")
        if pinned is None:
            raise TalkError(f"the prior has no preset for {emotion} (level {level})")
        return [(0.0, *neutral), (1.0, *pinned)]
    levels = [(lv, get(f"emotion/{emotion}/{lv}")) for lv in (1, 2, 3)]
    levels = [(lv, p) for lv, p in levels if p is not None]
    anchors = [(0.0, *neutral)]
    if levels:
        top = max(lv for lv, _ in levels)
        anchors += [(lv / top, *p) for lv, p in levels]
    else:
        p = get(f"emotion/{emotion}")
        if p is None:
            have = sorted({k.split("/")[1] for k in presets if k.startswith("emotion/")})
            raise TalkError(f"the prior has no preset for {emotion} (have: {', '.join(have) or 'none'})")
        anchors.append((1.0, *p))
    return anchors


def interpolate(anchors: list[tuple[float, Any, Any]], t: float):
    """Piecewise-linear (mean, logvar) at intensity ``t`` in [0, 1] along ``intensity_anchors``."""
    import torch

    t = float(min(max(t, 0.0), 1.0))
    for (t0, m0, v0), (t1, m1, v1) in zip(anchors, anchors[1:]):
        if t <= t1 or (t1, m1) == anchors[-1][:2]:
            a = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
            a = min(max(a, 0.0), 1.0)
            return torch.lerp(m0.float(), m1.float(), a), torch.lerp(v0.float(), v1.float(), a)
    _, m, v = anchors[-1]
    return m.float(), v.float()


def emotion_gaussian(
    presets: dict,
    emotion: str = "neutral",
    intensity: float = 1.0,
    blend: Sequence[tuple[str, float]] | None = None,
    level: int | None = None,
    reference: tuple[Any, Any] | None = None,
):
    """The (mean, logvar) conditioning one render: a preset, a blend of presets, or a reference.

    ``reference``: a clip's own Gaussian (``--emotion-from``), scaled from neutral by ``intensity``.
    ``blend``: weights over emotions (rest neutral), each emotion taken at ``intensity``.
    """
    import torch

    if reference is not None:
        n_mean, n_logvar = interpolate(intensity_anchors(presets, "neutral"), 0.0)
        mean, logvar = (torch.as_tensor(x, dtype=torch.float32).reshape(-1) for x in reference)
        if mean.shape != n_mean.shape:
            raise TalkError(f"reference embedding has {mean.numel()} values, the prior's presets {n_mean.numel()}")
        return torch.lerp(n_mean, mean, float(intensity)), torch.lerp(n_logvar, logvar, float(intensity))
    if blend:
        n_mean, n_logvar = interpolate(intensity_anchors(presets, "neutral"), 0.0)
        rest = 1.0 - sum(w for _, w in blend)
        mean, logvar = rest * n_mean, rest * n_logvar
        for emo, w in blend:
            m, v = interpolate(intensity_anchors(presets, emo), intensity)
            mean, logvar = mean + w * m, logvar + w * v
        return mean, logvar
    return interpolate(intensity_anchors(presets, check_emotion(emotion), level), intensity)
