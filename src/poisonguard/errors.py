"""The one exception type for mistakes a user can fix (bad file, bad number, bad name)."""


class UserError(ValueError):
    """A user's mistake: the CLI prints its message on one line and exits with code 2."""
