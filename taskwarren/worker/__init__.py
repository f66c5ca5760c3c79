"""The worker pool: a supervisor, its child processes, and how one delivery is run."""
