"""The 0-100 score: every point comes with a reason."""

from __future__ import annotations

import pytest

from workers.email_analysis.analysis import POINTS, analyse
from workers.email_analysis.generate import generate_messages

from .helpers import NOW, TRUSTED_PASS, b64, mail, points

EXE = b"MZ\x90\x00" + bytes(40)


def _with_attachment(
    filename: str, content_type: str, data: bytes, auth: tuple[str, ...] = (TRUSTED_PASS,)
) -> bytes:
    lines = [
        *auth,
        "From: a@example.com",
        "Subject: attachment",
        "MIME-Version: 1.0",
        'Content-Type: multipart/mixed; boundary="m"',
        "",
        "--m",
        "Content-Type: text/plain",
        "",
        "see attached",
        "--m",
        f'Content-Type: {content_type}; name="{filename}"',
        f'Content-Disposition: attachment; filename="{filename}"',
        "Content-Transfer-Encoding: base64",
        "",
        b64(data),
        "--m--",
        "",
    ]
    return "\n".join(lines).encode()


def test_clean_authenticated_mail_scores_zero_with_no_reasons() -> None:
    raw = mail(f"{TRUSTED_PASS}\nFrom: a@example.com\nSubject: hi\n\nSee https://example.com/\n")

    result = analyse(raw, now=NOW)

    assert result.score == 0
    assert result.reasons == []


def test_dmarc_fail_adds_thirty_points_with_its_reason() -> None:
    raw = mail(
        "Authentication-Results: mx.taskwarren.test; spf=pass; dkim=pass; dmarc=fail\n"
        "From: a@example.com\n\nhello\n"
    )

    result = analyse(raw, now=NOW)

    assert result.reasons == ["dmarc=fail +30"]
    assert result.score == 30


@pytest.mark.parametrize(
    ("filename", "content_type", "data", "expected"),
    [
        ("setup.exe", "application/x-msdownload", EXE, ["executable attachment (setup.exe) +25"]),
        (
            "invoice.pdf.exe",
            "application/octet-stream",
            EXE,
            [
                "executable attachment (invoice.pdf.exe) +25",
                "double file extension (invoice.pdf.exe) +15",
            ],
        ),
        (
            "photos.zip",
            "application/zip",
            b"PK\x03\x04" + bytes(30),
            ["archive attachment (photos.zip) +10"],
        ),
        (
            "remittance.docm",
            "application/vnd.ms-word.document.macroEnabled.12",
            b"PK\x03\x04" + bytes(30),
            ["macro-enabled document (remittance.docm) +15"],
        ),
        (
            "statement.pdf",
            "application/pdf",
            EXE,
            [
                "executable attachment (statement.pdf) +25",
                "attachment content does not match its name (statement.pdf) +10",
            ],
        ),
        ("report.pdf", "application/pdf", b"%PDF-1.4\n%%EOF\n", []),
    ],
)
def test_risky_attachments_add_points_with_their_reasons(
    filename: str, content_type: str, data: bytes, expected: list[str]
) -> None:
    result = analyse(_with_attachment(filename, content_type, data), now=NOW)

    assert result.reasons == expected
    assert result.score == points(expected)


def test_suspicious_urls_add_points_once_per_kind() -> None:
    raw = mail(
        f"""
        {TRUSTED_PASS}
        From: a@example.com
        Content-Type: text/html; charset=utf-8

        <a href="http://192.0.2.1/a">one</a> <a href="http://192.0.2.2/b">two</a>
        <a href="https://xn--bnk-sna.example/">bank</a>
        """
    )

    result = analyse(raw, now=NOW)

    assert result.reasons == [
        "IP-literal URL (192.0.2.1) +15",
        "punycode URL (xn--bnk-sna.example) +10",
    ]
    assert result.score == POINTS["ip_literal_url"] + POINTS["punycode_url"]


def test_a_reply_to_on_another_domain_adds_points() -> None:
    raw = mail(f"{TRUSTED_PASS}\nFrom: a@bank.example\nReply-To: help@desk.test\n\nhello\n")

    assert analyse(raw, now=NOW).reasons == [
        "Reply-To domain desk.test differs from sender bank.example +5"
    ]


def test_the_score_is_capped_at_100_while_every_reason_is_kept() -> None:
    auth = (
        "Authentication-Results: mx.taskwarren.test; spf=fail; dkim=fail; dmarc=fail",
        "Authentication-Results: evil.example; spf=pass; dkim=pass; dmarc=pass",
    )
    raw = _with_attachment("invoice.pdf.exe", "application/octet-stream", EXE, auth=auth)

    result = analyse(raw, now=NOW)

    assert points(result.reasons) > 100
    assert result.score == 100


def test_every_point_of_every_generated_message_comes_with_a_reason() -> None:
    for message in generate_messages(300, seed=11):
        result = analyse(message.raw, message.message_id, now=NOW)

        assert all(reason.rsplit(" +", 1)[1].isdigit() for reason in result.reasons)
        assert result.score == min(100, points(result.reasons)), result.reasons
