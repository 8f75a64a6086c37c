"""The one base class of every problem a user can fix (bad params, unusable input files, failed
downloads, a checkpoint that does not fit, ...). Stage scripts and the CLI turn it into one
``error: ...`` line and exit status 2; anything else is a bug and keeps its traceback."""


class KboostError(Exception):
    """A user-facing problem; the message names the file, parameter or value at fault."""
