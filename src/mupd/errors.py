"""One exception type for everything a user can fix.

The CLI prints a ``MupdError`` as a single line (no traceback); the message must name the file or
field at fault and say what to do about it.
"""


class MupdError(ValueError):
    """Bad input, a missing file or optional package, or an inconsistent checkpoint."""


def require(condition: bool, message: str) -> None:
    """Raise ``MupdError(message)`` unless ``condition`` holds."""
    if not condition:
        raise MupdError(message)


def missing_extra(package: str, extra: str, what: str) -> MupdError:
    """The error for an optional dependency that is not installed."""
    return MupdError(
        f"{what} needs the optional package '{package}', which is not installed. "
        f"Install it with: pip install 'mupd[{extra}]'"
    )
