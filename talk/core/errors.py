"""The one exception type for user errors: bad input, missing files, unknown names.

The CLI prints its message as one red line and exits with code 2; anything else is a bug and
keeps its traceback.
"""


class TalkError(Exception):
    """A user-facing error: the message is the whole story."""
