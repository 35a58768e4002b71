"""Exit codes of the ``rehydrate`` command and its subcommands (``bench``
included): 0 clean (a tolerated torn tail is a warning), 1 damage or a
failed check, 2 usage error or unreadable input."""

EXIT_OK, EXIT_DAMAGE, EXIT_USAGE = 0, 1, 2

__all__ = ["EXIT_DAMAGE", "EXIT_OK", "EXIT_USAGE"]
