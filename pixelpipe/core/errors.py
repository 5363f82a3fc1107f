"""Errors that the command line shows as one clear message naming the fix, not a traceback."""


class PixelpipeError(Exception):
    """A problem the user can fix; its message says how."""
