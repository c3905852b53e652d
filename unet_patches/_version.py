"""The toolkit's version (read by the command line's ``--version`` and written into exports)."""

__version__ = "0.1.0"
