"""Integrations with web frameworks: :mod:`taskwarren.contrib.django` and
:mod:`taskwarren.contrib.asgi` (FastAPI, Starlette).

Each needs its framework installed (the ``django`` and ``fastapi`` extras); the rest of
taskwarren never imports them.
"""
