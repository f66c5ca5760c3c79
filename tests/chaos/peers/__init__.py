"""Celery and Dramatiq under the chaos suite's faults, for comparison (run by hand).

These modules need Celery and Dramatiq, which taskwarren does not depend on: run them
with the shared benchmark's venv (``bash /work/shared/bench/setup.sh`` makes
``/tmp/anchor-venv``). See ``tests/chaos/README.md``.
"""
