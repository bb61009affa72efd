"""The one exception type the CLI turns into a one-line message."""


class TransferError(ValueError):
    """Bad input or a missing resource, with a message that names the fix."""
