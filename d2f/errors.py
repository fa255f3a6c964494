"""The one exception type for bad input.

A ``UserError`` is a problem the user can fix (a wrong name, a missing folder, an impossible
setting). Its message names the problem and the fix in one or two lines. It subclasses
``ValueError`` so that library callers can catch it as one; the CLI turns it into a one-line
message and exit code 2 instead of a traceback.
"""


class UserError(ValueError):
    """Bad input: the message says what is wrong and how to fix it."""
