"""The one exception type for bad user input."""


class SpecError(ValueError):
    """Bad input from the user: the CLI prints the message on one line and exits 2.

    Messages must be one line, name the offending value, and say what would be valid.
    """


class CalibanError(RuntimeError):
    """Something outside the user's input failed (an engine, a server): one line, exit 1."""
