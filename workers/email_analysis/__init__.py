"""Out-of-band analysis of incoming email, run as taskwarren tasks.

The pieces, from the bottom up:

* :mod:`.analysis` parses one RFC 5322 message and scores it (pure functions,
  no queue involved, never raises on bad mail);
* :mod:`.files` reads a message file from a Maildir, refusing what cannot be read;
* :mod:`.store` upserts results by Message-ID into SQLite, PostgreSQL or MySQL/MariaDB
  (:mod:`.store_mysql`);
* :mod:`.maildir`, :mod:`.intake` and :mod:`.ingress`: the SMTP/LMTP ingress
  (``taskwarren-email ingress``, :mod:`.cli`) that makes each message durable, records
  it and enqueues its analysis in one transaction, then answers 250;
* :mod:`.tasks` wires the above into the ``email.ingest`` and ``email.store`` queues;
* :mod:`.generate` writes deterministic, realistic (and sometimes broken) test mail;
* :mod:`.demo` runs the whole pipeline end to end and reports throughput.
"""
