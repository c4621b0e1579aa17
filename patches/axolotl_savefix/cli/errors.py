"""The CLI's one error: a mistake in what the user gave (one line on stderr, exit 2)."""


class InputError(Exception):
    """A mistake in what the user gave: one line on stderr, exit 2."""
