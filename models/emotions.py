"""Emotion labels: MEAD's 8 emotions, 3 intensity levels, and DICE-Talk's 22-class head."""

from __future__ import annotations

EMOTIONS: tuple[str, ...] = (
    "neutral", "angry", "contempt", "disgusted", "fear", "happy", "sad", "surprised",
)  # MEAD's order; index = emotion id
LEVELS: tuple[int, ...] = (1, 2, 3)  # MEAD intensity levels
NO_EMOTION = -1  # label id of a clip without an emotion label (the in-the-wild subset)


def emotion_id(name: str | None) -> int:
    """Index in EMOTIONS, or NO_EMOTION for an empty / missing label."""
    if not name:
        return NO_EMOTION
    return EMOTIONS.index(name)


def joint_class(emotion: int, level: int) -> int:
    """DICE-Talk's 22 classes: 0 = neutral, then 7 emotions x 3 levels (DICE-Talk §3.3)."""
    if emotion == 0:
        return 0
    return 1 + (emotion - 1) * len(LEVELS) + (level - 1)


N_JOINT_CLASSES = 1 + (len(EMOTIONS) - 1) * len(LEVELS)  # 22
