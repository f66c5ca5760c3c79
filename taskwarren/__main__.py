"""``python -m taskwarren``: the same as the ``taskwarren`` command."""

from taskwarren.cli import main

main()
