"""Test support: broker access, worker processes, ledgers, waiting without guessing."""
