"""The one exception type for errors a user can cause and fix."""


class RllcError(Exception):
    """A user-fixable error: bad input, a missing file, a mismatch.

    The CLI prints its message on one line (no traceback) and exits with status 2. The message names the file
    or value at fault and says what to do.
    """
