"""Unit tests of the email analysis pipeline (workers/email_analysis)."""
