"""The one exception type users see."""


class Phi4MMError(Exception):
    """A problem the user can fix: the message says what was wrong and what to do."""
