"""The one error type of the clients: a failure the user can act on."""


class TalkError(Exception):
    """A failure the user can act on; the message says what went wrong and what to do."""
