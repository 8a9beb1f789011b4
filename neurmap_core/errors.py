"""One exception type for every user-facing problem, so the CLI can print it as one line."""


class NeurmapError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""


class InputError(NeurmapError, ValueError):
    """Bad tensor, image or video given to a model or command."""


class CheckpointError(NeurmapError):
    """A weights file that is missing, unsafe, corrupt or of another architecture."""


class ConfigError(NeurmapError, ValueError):
    """An unknown or invalid setting in a config, override or option list."""


def from_known_keys(cls, d: dict, what: str):
    """``cls(**d)`` for a dataclass, refusing unknown keys in one line that lists the known ones, and values
    of the wrong type (``iterations=abc``) in one line that names the key and the type it takes."""
    import dataclasses

    from .options import typed_fields

    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        import difflib

        near = {k: difflib.get_close_matches(k, names, n=1) for k in unknown}
        hint = "".join(f" (did you mean {n[0]!r} for {k!r}?)" for k, n in near.items() if n)
        raise ConfigError(f"unknown {what} {unknown}{hint}; known: {', '.join(sorted(names))}")
    return cls(**{**d, **typed_fields(cls, d, what)})
