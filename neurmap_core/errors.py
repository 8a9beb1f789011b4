"""One exception type for every user-facing problem, so the CLI can print it as one line."""


class NeurmapError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""


class InputError(NeurmapError, ValueError):
    """Bad tensor, image or video given to a model or command."""


class CheckpointError(NeurmapError):
    """A weights file that is missing, unsafe, corrupt or of another architecture."""
