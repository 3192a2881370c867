"""The one exception type for mistakes a user can fix."""


class UserError(ValueError):
    """Bad input from the user: a missing file, a wrong dataset path, a bad config key...

    The message is one line saying what is wrong and how to fix it. The CLI prints it as
    ``error: <message>`` and exits with status 2, without a traceback (``--debug`` shows it).
    """
