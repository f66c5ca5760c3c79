"""Applications built on taskwarren.

Each subpackage is a self-contained set of task modules that a taskwarren
worker can load, for example ``taskwarren worker workers.email_analysis.tasks``.
"""
