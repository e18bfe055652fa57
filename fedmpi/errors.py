"""The one exception type for mistakes a user can make (bad config, bad data).

The CLI prints these as a single line without a traceback; anything else is a
bug and keeps its traceback.
"""


import argparse


class FedMPIError(Exception):
    """A user-facing error whose message names the offending file or field."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes are FedMPIErrors, so the command line too gets the one-line error."""

    def error(self, message):
        raise FedMPIError(f"{message} (see {self.prog} --help)")
