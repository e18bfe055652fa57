"""The one exception type for mistakes a user can make (bad config, bad data), and the exit
status of a run that diverged.

The CLI prints these as a single line without a traceback; anything else is a
bug and keeps its traceback.
"""


import argparse


# A non-finite client update ended the run (on_bad_update): an outcome, recorded in summary.json,
# not a failure to rerun. Also the broadcast command that ends the round loop on every rank.
DIVERGED = 3


class FedMPIError(Exception):
    """A user-facing error whose message names the offending file or field."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes are FedMPIErrors, so the command line too gets the one-line error."""

    def error(self, message):
        raise FedMPIError(f"{message} (see {self.prog} --help)")
