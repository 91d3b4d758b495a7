"""Exceptions with a meaning for the command line."""


class InputError(ValueError):
    """Bad input or bad arguments: the CLI prints the message on one line and exits 2.

    The message must name the file, column or value at fault.
    """
