"""Reading message files: what cannot be read fails once, with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.email_analysis.files import (
    DEFAULT_MAX_BYTES,
    UnreadableMessageError,
    max_message_bytes,
    read_message_file,
)


def test_a_readable_file_comes_back_as_its_bytes(tmp_path: Path) -> None:
    path = tmp_path / "m.eml"
    path.write_bytes(b"From: a@example.com\n\nhi\n")

    assert read_message_file(path) == b"From: a@example.com\n\nhi\n"


def test_a_missing_file_is_unreadable_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(UnreadableMessageError) as caught:
        read_message_file(tmp_path / "gone.eml")

    assert str(caught.value) == f"{tmp_path / 'gone.eml'}: no such file"
    assert caught.value.reason == "no such file"


def test_a_directory_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(UnreadableMessageError, match="not a regular file"):
        read_message_file(tmp_path)


def test_an_oversized_file_is_unreadable_with_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.eml"
    path.write_bytes(b"x" * 2048)

    with pytest.raises(UnreadableMessageError, match="2048 bytes is over the limit of 1024 bytes"):
        read_message_file(path, max_bytes=1024)


def test_a_message_moved_from_new_to_cur_by_a_mail_client_is_still_found(tmp_path: Path) -> None:
    for sub in ("new", "cur", "tmp"):
        (tmp_path / sub).mkdir()
    (tmp_path / "cur" / "1767571200.S1I1.host:2,S").write_bytes(b"Subject: seen\n\nx\n")

    assert read_message_file(tmp_path / "new" / "1767571200.S1I1.host") == b"Subject: seen\n\nx\n"


def test_the_size_limit_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMAIL_ANALYSIS_MAX_BYTES", "4096")
    assert max_message_bytes() == 4096

    monkeypatch.setenv("EMAIL_ANALYSIS_MAX_BYTES", "lots")
    assert max_message_bytes() == DEFAULT_MAX_BYTES

    monkeypatch.delenv("EMAIL_ANALYSIS_MAX_BYTES")
    assert max_message_bytes() == DEFAULT_MAX_BYTES
