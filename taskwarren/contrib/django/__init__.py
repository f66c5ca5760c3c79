"""taskwarren in a Django project: add ``"taskwarren.contrib.django"`` to INSTALLED_APPS.

What it gives:

- ``task.options(db=django.db.connection).send(...)`` inside ``transaction.atomic()``
  writes the call to the outbox in Django's own transaction (that part needs no app
  installed: see :mod:`taskwarren.store.outbox`). The task runs if the block commits,
  never if it rolls back.
- :class:`~taskwarren.contrib.django.middleware.CloseOldConnections`: the worker closes
  the connections Django would close at the end of a request, around every task.
- ``python manage.py taskwarren_worker MODULES [worker options]``: ``taskwarren worker``
  in the project's settings, with that middleware.
"""
