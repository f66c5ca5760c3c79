"""What analyse() extracts: sender, URLs, attachments, headers, charset, language."""

from __future__ import annotations

import hashlib
from urllib.parse import quote

import pytest

from workers.email_analysis.analysis import analyse, classify_url, detect_language

from .helpers import NOW, TRUSTED_PASS, b64, encoded_word, mail


def test_the_sender_address_and_domain_come_from_the_from_header() -> None:
    raw = mail('From: "Billing Team" <Billing@Shop.Example>\nSubject: x\n\nhi\n')

    result = analyse(raw, now=NOW)

    assert result.sender == "billing@shop.example"
    assert result.sender_domain == "shop.example"


def test_an_unquoted_display_name_with_a_dot_is_read_without_a_defect() -> None:
    result = analyse(mail("From: J. Smith <j@example.com>\n\nhi\n"), now=NOW)

    assert result.sender == "j@example.com"
    assert result.broken is False


def test_raw_utf8_headers_as_rfc_6532_allows_are_decoded_and_not_broken() -> None:
    raw = "From: Zoë <zoë@bücher.example>\nSubject: Grüße\n\nhallo\n".encode()

    result = analyse(raw, now=NOW)

    assert result.sender == "zoë@bücher.example"
    assert result.sender_domain == "xn--bcher-kva.example"
    assert result.subject == "Grüße"
    assert result.broken is False


def test_a_sender_is_still_found_in_a_mangled_from_header() -> None:
    result = analyse(mail('From: "unterminated <a@b.example>\n\nhi\n'), now=NOW)

    assert result.sender_domain == "b.example"
    assert result.broken is True
    assert any(d.startswith("header from: InvalidHeaderDefect") for d in result.defects)


def test_urls_come_from_html_links_and_plain_text_with_their_domains() -> None:
    raw = mail(
        """
        From: news@news.example
        Subject: links
        MIME-Version: 1.0
        Content-Type: multipart/alternative; boundary="b1"

        --b1
        Content-Type: text/plain; charset=utf-8

        Read it at https://www.news.example/issue/7, or www.example.org/about.
        --b1
        Content-Type: text/html; charset=utf-8

        <p><a href="https://www.news.example/issue/7">Issue 7</a>
        <a href="mailto:news@news.example">write to us</a>
        <a href="https://cdn.example.net/x?a=1&amp;b=2">more</a></p>
        --b1--
        """
    )

    result = analyse(raw, now=NOW)

    assert [u.url for u in result.urls] == [
        "https://www.news.example/issue/7",
        "http://www.example.org/about",
        "https://cdn.example.net/x?a=1&b=2",
    ]
    assert result.url_domains == ["cdn.example.net", "www.example.org", "www.news.example"]
    issue = result.urls[0]
    assert issue.link_text == "Issue 7"
    assert issue.flags == []


def test_link_text_that_names_another_domain_is_flagged_as_mismatched() -> None:
    raw = mail(
        """
        From: security@bank.example
        Subject: verify
        Content-Type: text/html; charset=utf-8

        <a href="https://login.account-verify.test/x">https://www.bank.example/login</a>
        <a href="https://secure.bank.example/y">www.bank.example</a>
        """
    )

    result = analyse(raw, now=NOW)

    by_url = {u.url: u for u in result.urls}
    assert by_url["https://login.account-verify.test/x"].flags == ["mismatched-text"]
    assert by_url["https://secure.bank.example/y"].flags == []  # same site, other host
    assert "link text shows another domain (login.account-verify.test) +20" in result.reasons


@pytest.mark.parametrize(
    "url",
    [
        "http://192.0.2.1/login",
        "http://[2001:db8::1]/verify",
        "http://3221225985/account",  # 192.0.2.1 as one decimal number
        "http://0xC0000201/account",  # and in hexadecimal
    ],
)
def test_ip_literal_hosts_are_flagged_in_every_spelling(url: str) -> None:
    _, flags = classify_url(url)

    assert flags == ["ip-literal"]


def test_punycode_hosts_are_flagged_and_unicode_hosts_reported_as_punycode() -> None:
    unicode_host = "b\u0430nk.example"  # Cyrillic a
    ascii_host = unicode_host.encode("idna").decode("ascii")

    assert classify_url(f"https://{ascii_host}/signin") == (ascii_host, ["punycode"])
    assert classify_url(f"https://{unicode_host}/signin") == (ascii_host, ["punycode"])
    assert classify_url("https://www.bank.example/") == ("www.bank.example", [])


def test_attachment_name_type_size_and_sha256_match_its_bytes() -> None:
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 8 + b"%%EOF\n"
    raw = mail(
        f"""
        From: a@example.com
        Subject: report
        MIME-Version: 1.0
        Content-Type: multipart/mixed; boundary="m"

        --m
        Content-Type: text/plain

        See attached.
        --m
        Content-Type: application/pdf; name="report.pdf"
        Content-Disposition: attachment; filename="report.pdf"
        Content-Transfer-Encoding: base64

        {b64(pdf).replace(chr(10), chr(10) + " " * 8)}
        --m--
        """
    )

    result = analyse(raw, now=NOW)

    assert len(result.attachments) == 1
    attachment = result.attachments[0]
    assert attachment.filename == "report.pdf"
    assert attachment.content_type == "application/pdf"
    assert attachment.size == len(pdf)
    assert attachment.sha256 == hashlib.sha256(pdf).hexdigest()
    assert attachment.flags == []
    assert result.broken is False


def test_a_non_ascii_filename_in_rfc_2231_form_is_decoded() -> None:
    name = "Rechnung März.pdf"
    raw = mail(
        f"""
        From: a@example.com
        Subject: Rechnung
        MIME-Version: 1.0
        Content-Type: multipart/mixed; boundary="m"

        --m
        Content-Type: text/plain

        Anbei.
        --m
        Content-Type: application/pdf
        Content-Disposition: attachment; filename*=utf-8''{quote(name)}
        Content-Transfer-Encoding: base64

        JVBERi0xLjQK
        --m--
        """
    )

    assert [a.filename for a in analyse(raw, now=NOW).attachments] == [name]


@pytest.mark.parametrize(
    ("subject", "charset"),
    [
        ("Grüße aus Köln - 10 €", "utf-8"),
        ("Réunion déplacée à jeudi", "iso-8859-1"),
        ("請求書のご案内", "shift_jis"),
    ],
)
def test_encoded_word_headers_are_decoded(subject: str, charset: str) -> None:
    raw = mail(
        f"""
        From: {encoded_word("Zoë Müller", "utf-8")} <zoe@example.com>
        Subject: {encoded_word(subject, charset)}

        hello
        """
    )

    result = analyse(raw, now=NOW)

    assert result.subject == subject
    assert result.sender_domain == "example.com"
    assert result.broken is False


def test_a_latin1_quoted_printable_subject_split_over_two_words_is_joined() -> None:
    raw = mail(
        """
        From: a@example.fr
        Subject: =?iso-8859-1?Q?R=E9union_d=E9plac=E9e?=
         =?iso-8859-1?Q?_=E0_jeudi?=

        ok
        """
    )

    assert analyse(raw, now=NOW).subject == "Réunion déplacée à jeudi"


@pytest.mark.parametrize(
    ("text", "charset", "language"),
    [
        (
            (
                "Please find the report for this month, and let us know if you have questions "
                "about the figures."
            ),
            "us-ascii",
            "en",
        ),
        (
            (
                "Bitte prüfen Sie den Bericht und geben Sie uns bis Freitag eine Rückmeldung, "
                "wir danken Ihnen für die gute Zusammenarbeit."
            ),
            "iso-8859-1",
            "de",
        ),
        (
            (
                "Nous vous remercions pour votre confiance et restons à votre disposition pour "
                "toute question."
            ),
            "iso-8859-1",
            "fr",
        ),
        (
            (
                "Su pedido ya está en camino y llegará en tres días, gracias por su paciencia "
                "con la migración."
            ),
            "utf-8",
            "es",
        ),
        (
            "いつもお世話になっております。今月の書類をお送りしますので、ご確認ください。",
            "shift_jis",
            "ja",
        ),
        (
            "Направляем вам документы за текущий месяц. Пожалуйста, пришлите замечания.",
            "koi8-r",
            "ru",
        ),
    ],
)
def test_the_charset_and_language_hint_come_from_the_body(
    text: str, charset: str, language: str
) -> None:
    raw = (
        f"From: a@example.com\nSubject: x\nMIME-Version: 1.0\n"
        f'Content-Type: text/plain; charset="{charset}"\nContent-Transfer-Encoding: base64\n\n'
        f"{b64(text.encode(charset))}\n"
    ).encode("ascii")

    result = analyse(raw, now=NOW)

    assert result.charset == charset
    assert result.language == language
    assert result.broken is False


def test_too_little_text_gives_an_undetermined_language() -> None:
    assert detect_language("12345 ok") == "und"


def test_the_message_id_comes_from_the_caller_then_the_header_then_the_bytes() -> None:
    with_header = mail("Message-ID: <abc@example.com>\nFrom: a@example.com\n\nhi\n")
    without = mail("From: a@example.com\n\nhi\n")

    assert analyse(with_header, "<given@example.com>", now=NOW).message_id == "<given@example.com>"
    assert analyse(with_header, now=NOW).message_id == "<abc@example.com>"
    derived = analyse(without, now=NOW).message_id
    assert derived == analyse(without, now=NOW).message_id
    assert derived.endswith("@email-analysis.invalid>")


def test_size_and_time_of_analysis_are_recorded() -> None:
    raw = mail(f"{TRUSTED_PASS}\nFrom: a@example.com\n\nhi\n")

    result = analyse(raw, now=NOW)

    assert result.size_bytes == len(raw)
    assert result.analysed_at == NOW


def test_an_analysis_survives_a_json_round_trip() -> None:
    raw = mail(
        f"""
        {TRUSTED_PASS}
        From: {encoded_word("山田 太郎", "shift_jis")} <taro@example.jp>
        Subject: {encoded_word("会議の日程変更について", "shift_jis")}
        Content-Type: text/html; charset=utf-8

        <a href="http://198.51.100.7/x">https://www.example.jp/</a>
        """
    )
    result = analyse(raw, now=NOW)

    assert type(result).model_validate_json(result.model_dump_json()) == result
