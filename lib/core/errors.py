"""The one exception type that entry scripts turn into a one-line message and exit status 2."""


class UserError(Exception):
    """Bad input from the user: a file, column, flag or folder that is not what was expected.

    The message names the culprit and what was expected; entry scripts print it without a traceback.
    """
