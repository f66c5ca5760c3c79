"""Broken mail is analysed as far as possible, marked broken with reasons, never raised on."""

from __future__ import annotations

import hashlib

import pytest

from workers.email_analysis.analysis import Analysis, analyse

from .helpers import NOW, b64, mail


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return []


PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(40))  # short: one base64 line keeps dedent working


def test_a_multipart_without_boundary_is_marked_broken_and_its_parts_recovered() -> None:
    raw = mail(
        f"""
        From: a@example.com
        Subject: no boundary
        MIME-Version: 1.0
        Content-Type: multipart/mixed

        --XYZ
        Content-Type: text/plain; charset=utf-8

        See http://192.0.2.9/login for details.
        --XYZ
        Content-Type: image/png; name="scan.png"
        Content-Disposition: attachment; filename="scan.png"
        Content-Transfer-Encoding: base64

        {b64(PNG)}
        --XYZ--
        """
    )

    result = analyse(raw, now=NOW)

    assert result.broken is True
    assert any("NoBoundaryInMultipartDefect" in d for d in result.defects)
    assert "message: boundary 'XYZ' recovered from the body" in result.defects
    assert [(a.filename, a.sha256) for a in result.attachments] == [
        ("scan.png", hashlib.sha256(PNG).hexdigest())
    ]
    assert result.url_domains == ["192.0.2.9"]


def test_bad_base64_is_marked_broken_and_the_attachment_still_hashed() -> None:
    raw = mail(
        """
        From: a@example.com
        Subject: bad base64
        MIME-Version: 1.0
        Content-Type: multipart/mixed; boundary="m"

        --m
        Content-Type: text/plain

        attached
        --m
        Content-Type: application/octet-stream; name="data.bin"
        Content-Disposition: attachment; filename="data.bin"
        Content-Transfer-Encoding: base64

        AAECAwQF!!%%BgcICQ
        --m--
        """
    )

    result = analyse(raw, now=NOW)

    assert result.broken is True
    assert any(
        d.startswith("part 2 (application/octet-stream): InvalidBase64CharactersDefect")
        for d in result.defects
    )
    assert result.attachments[0].filename == "data.bin"
    assert result.attachments[0].size > 0
    assert "broken MIME" in result.reasons[-1]


def test_a_truncated_message_is_marked_broken() -> None:
    raw = mail(
        f"""
        From: a@example.com
        Subject: cut short
        MIME-Version: 1.0
        Content-Type: multipart/mixed; boundary="m"

        --m
        Content-Type: text/plain

        The scan follows.
        --m
        Content-Type: image/png; name="scan.png"
        Content-Transfer-Encoding: base64

        {b64(PNG)}
        """
    )[:-40]

    result = analyse(raw, now=NOW)

    assert result.broken is True
    assert any("CloseBoundaryNotFoundDefect" in d for d in result.defects)
    assert [a.filename for a in result.attachments] == ["scan.png"]


def test_an_unknown_charset_is_marked_broken_and_the_text_still_read() -> None:
    raw = mail(
        """
        From: a@example.com
        Subject: charset
        Content-Type: text/plain; charset="x-no-such-charset"

        Visit https://www.example.com/offer today.
        """
    )

    result = analyse(raw, now=NOW)

    assert result.broken is True
    assert result.defects == ["message: unknown charset 'x-no-such-charset' (read as UTF-8)"]
    assert result.charset == "x-no-such-charset"
    assert [u.url for u in result.urls] == ["https://www.example.com/offer"]


def test_bytes_that_do_not_fit_the_declared_charset_are_a_defect() -> None:
    raw = b"From: a@example.com\nContent-Type: text/plain; charset=utf-8\n\nna\xefve caf\xe9\n"

    result = analyse(raw, now=NOW)

    assert result.broken is True
    assert result.defects == ["message: bytes not valid in charset 'utf-8'"]


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\xff\xfe" * 500,
        b"no headers at all, just a line",
        b"From: <<<@@@>>>\nTo: ,,,;;;\nSubject: =?x-bogus?B?!!!?=\n\nbody\n",
        b"From: J\xf6rg <j@example.de>\nSubject: 8-bit \xe4\xf6\xfc in a header\n\nhi\n",
        b"Content-Type: text\nContent-Transfer-Encoding: base64\n\n@@@@\n",
        (
            b'Content-Type: multipart/mixed; boundary="a"\n\n--a\nContent-Type: multipart/mixed;'
            b' boundary="b"\n\n--b\n'
        ),
        b"Content-Type: message/rfc822\n\nFrom: inner@example.com\n\nnested\n",
        b'Content-Type: text/html; charset=utf-8\n\n<a href="http://[::1">x</a><a href=',
        b"From: a@example.com\nSubject: nul \x00 in header\n\nnul \x00 in body\n",
        b'Content-Type: multipart/mixed; boundary="z"\n\n'
        + b"".join(b"--z\nContent-Type: text/plain\n\nx\n" for _ in range(600))
        + b"--z--\n",
    ],
    ids=[
        "empty",
        "binary noise",
        "no header block",
        "garbage addresses and a bogus encoded word",
        "raw 8-bit header bytes",
        "content type without subtype and bad base64",
        "nested multipart cut short",
        "message/rfc822 part",
        "unterminated html",
        "NUL characters",
        "600 parts",
    ],
)
def test_no_input_makes_the_analysis_raise(raw: bytes) -> None:
    result = analyse(raw, now=NOW)

    assert isinstance(result, Analysis)
    assert 0 <= result.score <= 100
    assert Analysis.model_validate_json(result.model_dump_json()) == result
    assert not any("\x00" in text for text in _strings(result.model_dump()))


def test_more_than_500_parts_are_cut_off_with_a_defect() -> None:
    raw = (
        b'Content-Type: multipart/mixed; boundary="z"\n\n'
        + b"".join(b"--z\nContent-Type: text/plain\n\nx\n" for _ in range(600))
        + b"--z--\n"
    )

    result = analyse(raw, now=NOW)

    assert "more than 500 MIME parts; the rest was skipped" in result.defects


def test_well_formed_mail_is_not_marked_broken() -> None:
    raw = mail(
        """
        From: a@example.com
        Subject: fine
        MIME-Version: 1.0
        Content-Type: multipart/alternative; boundary="alt"

        --alt
        Content-Type: text/plain; charset=us-ascii

        plain
        --alt
        Content-Type: text/html; charset=us-ascii

        <p>html</p>
        --alt--
        """
    )

    result = analyse(raw, now=NOW)

    assert result.broken is False
    assert result.defects == []
