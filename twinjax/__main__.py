"""``python -m twinjax``: the same command line as the ``twinjax`` script."""

from .cli import app

app(prog_name="twinjax")
