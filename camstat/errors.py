"""The one exception type that reaches the user as ``error: ...`` and exit code 2."""


class CamstatError(Exception):
    """Bad input or a refused operation.

    The CLI prints ``error: <message>`` on one line and exits with code 2;
    the message should name the problem and what to do about it.
    """
