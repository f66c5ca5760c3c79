"""Tests against the real web frameworks: Django, FastAPI."""
