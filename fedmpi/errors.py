"""The one exception type for mistakes a user can make (bad config, bad data).

The CLI prints these as a single line without a traceback; anything else is a
bug and keeps its traceback.
"""


class FedMPIError(Exception):
    """A user-facing error whose message names the offending file or field."""
