"""The error a model config raises when its values cannot build a model.

models/ imports nothing from the rest of talk, so its configs cannot raise ``talk.core.errors.
TalkError``; params parsing turns a ``ConfigError`` into one, and the CLI prints either as one line.
"""


class ConfigError(ValueError):
    """Values of a model config that do not fit together (the message names the params key)."""
