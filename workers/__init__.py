"""Applications built on taskwarren.

Each subpackage is a self-contained set of task modules that a taskwarren
worker can load, for example ``taskwarren worker workers.email_analysis.tasks``.
They ship as the ``taskwarren-email`` distribution (``pyproject.toml`` here), not
inside the taskwarren wheel: the library never imports them.
"""
