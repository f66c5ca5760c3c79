"""Deterministic generator of realistic test mail, written into a Maildir.

Each message is built from its own ``random.Random`` seeded with ``(seed,
index)``, so the same seed always yields the same bytes, message ``i`` does not
depend on how many others were made, and thousands of messages take a second
or two. What comes out, in proportions chosen by the seed:

* plain text, multipart/alternative text+HTML, and multipart/mixed with
  attachments (PDF, ZIP, EXE, DOCX and PNG stand-ins with the right MIME types);
* Authentication-Results from our MX (``mx.taskwarren.test``) with SPF, DKIM
  and DMARC pass/fail/softfail/none, sometimes joined by a forged header from
  another authserv-id that claims a pass, sometimes no header at all;
* URLs, some suspicious: IP-literal hosts, punycode look-alike domains, link
  text that shows one domain while the link goes to another;
* RFC 2047 encoded headers in UTF-8, ISO-8859-1 and Shift_JIS, and bodies in
  English, German, French, Spanish, Japanese and Russian;
* a share of broken MIME: missing boundary, bad base64, truncated messages,
  unknown charsets.

The sample Maildir shipped next to this module was written with::

    python -m workers.email_analysis.generate workers/email_analysis/sample_maildir \\
        --replace -n 20 --seed 2039 --broken-ratio 0.15 --seen-ratio 0.5

(:data:`SAMPLE_SETTINGS`); run it again after changing the generator.

Only reserved names are used (``*.example``, ``*.test``, ``example.com``,
TEST-NET addresses), so nothing here points at a real host.
"""

from __future__ import annotations

import base64
import html
import io
import mailbox
import os
import quopri
import random
import struct
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from urllib.parse import quote

import click

__all__ = [
    "BROKEN_KINDS",
    "MX_AUTHSERV_ID",
    "SAMPLE_MAILDIR",
    "SAMPLE_SETTINGS",
    "GeneratedMessage",
    "generate_maildir",
    "generate_message",
    "generate_messages",
    "maildir_name",
]

#: The authserv-id our (imaginary) inbound MX stamps on Authentication-Results.
MX_AUTHSERV_ID = "mx.taskwarren.test"
RECIPIENT_DOMAIN = "taskwarren.test"
#: The shipped sample Maildir, and the generator settings it was written with.
SAMPLE_MAILDIR = Path(__file__).with_name("sample_maildir")
SAMPLE_SETTINGS: dict[str, float] = {"n": 20, "seed": 2039, "broken_ratio": 0.15, "seen_ratio": 0.5}
_NAME_EPOCH = 1767571200  # 2026-01-05T00:00:00Z, the first generated Date
BROKEN_KINDS: tuple[str, ...] = ("missing-boundary", "bad-base64", "truncated", "bad-charset")


@dataclass(frozen=True)
class GeneratedMessage:
    """One generated message and what the generator meant it to be."""

    index: int
    message_id: str
    raw: bytes
    kind: str  # "normal", "newsletter", "phish" or "malware"
    language: str
    broken: str | None  # one of BROKEN_KINDS, or None for well-formed mail


# --------------------------------------------------------------------------- content


@dataclass(frozen=True)
class _Lang:
    charsets: tuple[str, ...]
    names: tuple[str, ...]
    greeting: str
    closing: str
    subjects: tuple[str, ...]
    lines: tuple[str, ...]
    phish_subjects: tuple[str, ...]
    phish_lines: tuple[str, ...]
    link_texts: tuple[str, ...]
    files: tuple[str, ...]


_LANGS: dict[str, _Lang] = {
    "en": _Lang(
        charsets=("us-ascii", "utf-8"),
        names=("Olivia Parker", "Sam Okafor", "Priya Raman", "Tom Hughes", "Grace Lindqvist"),
        greeting="Hello {name},",
        closing="Best regards,",
        subjects=(
            "Your invoice {n} is ready",
            "Team meeting moved to Thursday",
            "Draft of the quarterly report",
            "Shipping update for order {n}",
            "Notes from the design review",
            "Reminder: timesheets are due on Friday",
        ),
        lines=(
            "Please find the details for this month below.",
            "The meeting will take place in room 4 and you are welcome to join remotely.",
            "We have attached the latest version of the report for your review.",
            "Your order has left our warehouse and should arrive within three days.",
            "Let me know if you have any questions about the figures.",
            "Thank you for your patience while we finish the migration.",
            "The slides from last week are on the shared drive as usual.",
        ),
        phish_subjects=(
            "Action required: verify your account",
            "Unusual sign-in activity on your account",
            "Your mailbox is almost full",
            "Final notice: your password expires today",
        ),
        phish_lines=(
            "We noticed an unusual sign-in attempt and have limited your account.",
            "To keep your access, please confirm your details within 24 hours.",
            "If you do not verify now, your account will be closed.",
            "Click the secure link below and sign in with your usual password.",
        ),
        link_texts=("View your invoice", "Open the report", "Track your parcel", "Read more"),
        files=("invoice_{n}.pdf", "report_q{q}.docx", "photo_{n}.png", "documents_{n}.zip"),
    ),
    "de": _Lang(
        charsets=("iso-8859-1", "utf-8"),
        names=("Jürgen Weiß", "Anna Müller", "Björn Schäfer", "Käthe Groß"),
        greeting="Hallo {name},",
        closing="Mit freundlichen Grüßen",
        subjects=(
            "Ihre Rechnung {n} ist verfügbar",
            "Besprechung auf Donnerstag verschoben",
            "Lieferung für Bestellung {n} unterwegs",
            "Entwurf des Quartalsberichts für Sie",
        ),
        lines=(
            "anbei finden Sie die Unterlagen für den laufenden Monat.",
            "Die Besprechung findet im Raum 4 statt, Sie können auch online teilnehmen.",
            "Bitte prüfen Sie den Bericht und geben Sie uns bis Freitag eine Rückmeldung.",
            "Ihre Bestellung ist unterwegs und wird in drei Tagen bei Ihnen sein.",
            "Wir danken Ihnen für die gute Zusammenarbeit in diesem Jahr.",
        ),
        phish_subjects=(
            "Dringend: Bestätigen Sie Ihr Konto",
            "Ungewöhnliche Anmeldung bei Ihrem Konto",
        ),
        phish_lines=(
            "Wir haben eine ungewöhnliche Anmeldung festgestellt und Ihr Konto gesperrt.",
            "Bitte bestätigen Sie Ihre Daten innerhalb von 24 Stunden über den Link.",
            "Wenn Sie nicht reagieren, wird Ihr Konto gelöscht.",
        ),
        link_texts=("Rechnung ansehen", "Bericht öffnen", "Sendung verfolgen"),
        files=("Rechnung_{n}.pdf", "Rechnung März {n}.pdf", "Bericht_Q{q}.docx", "Fotos_{n}.zip"),
    ),
    "fr": _Lang(
        charsets=("iso-8859-1", "utf-8"),
        names=("Amélie Laurent", "François Dubois", "Hélène Girard", "Jérôme Lefèvre"),
        greeting="Bonjour {name},",
        closing="Bien cordialement,",
        subjects=(
            "Votre facture {n} est prête",
            "Réunion déplacée à jeudi",
            "Mise à jour de votre commande {n}",
            "Compte rendu de la réunion de lundi",
        ),
        lines=(
            "vous trouverez ci-joint les documents pour le mois en cours.",
            "La réunion aura lieu dans la salle 4 et vous pouvez aussi nous rejoindre en ligne.",
            "Nous vous remercions pour votre confiance et restons à votre disposition.",
            "Votre commande est en route et sera livrée dans trois jours.",
            "Merci de nous envoyer vos remarques sur le rapport avant vendredi.",
        ),
        phish_subjects=(
            "Action requise : vérifiez votre compte",
            "Connexion inhabituelle détectée",
        ),
        phish_lines=(
            "Nous avons détecté une connexion inhabituelle et votre compte est limité.",
            "Pour garder votre accès, confirmez vos informations dans les 24 heures.",
            "Sans réponse de votre part, votre compte sera fermé.",
        ),
        link_texts=("Voir la facture", "Ouvrir le rapport", "Suivre le colis"),
        files=("facture_{n}.pdf", "rapport_T{q}.docx", "photos_été_{n}.zip"),
    ),
    "es": _Lang(
        charsets=("iso-8859-1", "utf-8"),
        names=("José Núñez", "Lucía Fernández", "Martín Ibáñez", "Sofía Peña"),
        greeting="Hola {name}:",
        closing="Un cordial saludo,",
        subjects=(
            "Su factura {n} está disponible",
            "Reunión trasladada al jueves",
            "Actualización del pedido {n}",
            "Borrador del informe trimestral",
        ),
        lines=(
            "le enviamos los documentos del mes en curso para su revisión.",
            "La reunión será en la sala 4 y también puede unirse por videollamada.",
            "Su pedido ya está en camino y llegará en tres días.",
            "Por favor, envíe sus comentarios sobre el informe antes del viernes.",
            "Gracias por su paciencia mientras terminamos la migración.",
        ),
        phish_subjects=("Acción necesaria: verifique su cuenta", "Actividad inusual en su cuenta"),
        phish_lines=(
            "Hemos detectado un acceso inusual y su cuenta está limitada.",
            "Para mantener el acceso, confirme sus datos en las próximas 24 horas.",
            "Si no lo hace, su cuenta será cancelada.",
        ),
        link_texts=("Ver la factura", "Abrir el informe", "Seguir el envío"),
        files=("factura_{n}.pdf", "informe_T{q}.docx", "fotos_año_{n}.zip"),
    ),
    "ja": _Lang(
        charsets=("shift_jis", "utf-8"),
        names=("山田 太郎", "佐藤 花子", "鈴木 一郎", "高橋 美咲"),
        greeting="{name} 様",
        closing="よろしくお願いいたします。",
        subjects=(
            "請求書{n}のご案内",
            "会議の日程変更について",
            "ご注文{n}の発送のお知らせ",
            "四半期報告書の草案を送ります",
        ),
        lines=(
            "いつもお世話になっております。",
            "今月の書類をお送りしますので、ご確認ください。",
            "会議は木曜日の午後三時からに変更になりました。",
            "ご注文の商品は本日発送いたしました。",
            "ご不明な点がございましたら、お気軽にお問い合わせください。",
        ),
        phish_subjects=("【重要】アカウントの確認をお願いします", "不正なログインを検知しました"),
        phish_lines=(
            "お客様のアカウントで不正なログインを検知しました。",
            "二十四時間以内に下記のリンクから本人確認を行ってください。",
            "確認が取れない場合、アカウントは停止されます。",
        ),
        link_texts=("請求書を見る", "報告書を開く", "配送状況を確認する"),
        files=("請求書_{n}.pdf", "報告書_{q}.docx", "写真_{n}.png"),
    ),
    "ru": _Lang(
        charsets=("utf-8", "koi8-r"),
        names=("Анна Смирнова", "Дмитрий Иванов", "Ольга Кузнецова", "Сергей Попов"),
        greeting="Здравствуйте, {name}!",
        closing="\u0421 уважением,",  # a Cyrillic capital Es, spelt out for linters
        subjects=(
            "Ваш счёт {n} готов",
            "Встреча перенесена на четверг",
            "Заказ {n} передан в доставку",
            "Черновик квартального отчёта",
        ),
        lines=(
            "Направляем вам документы за текущий месяц.",
            "Встреча пройдёт в переговорной номер четыре, можно подключиться онлайн.",
            "Ваш заказ уже в пути и будет доставлен через три дня.",
            "Пожалуйста, пришлите замечания по отчёту до пятницы.",
        ),
        phish_subjects=("Срочно: подтвердите свою учётную запись", "Подозрительный вход в аккаунт"),
        phish_lines=(
            "Мы заметили подозрительный вход, и доступ к аккаунту ограничен.",
            "Подтвердите свои данные по ссылке ниже в течение 24 часов.",
            "Иначе учётная запись будет заблокирована.",
        ),
        link_texts=("Открыть счёт", "Посмотреть отчёт", "Отследить посылку"),
        files=("счёт_{n}.pdf", "отчёт_{q}.docx", "фото_{n}.zip"),
    ),
}
_LANG_WEIGHTS: dict[str, int] = {"en": 45, "de": 15, "fr": 12, "es": 10, "ja": 10, "ru": 8}

_SENDER_DOMAINS = (
    "example.com",
    "example.org",
    "example.net",
    "shop.example",
    "news.example",
    "uni.example",
    "logistics.example",
    "bank.example",
    "cloud.example",
    "travel.example",
)
_LOOKALIKE_DOMAINS = (
    "bank-secure.example",
    "account-verify.test",
    "examp1e.com",
    "login-cloud.test",
    "mail-support.test",
)
# Look-alike names with Cyrillic letters standing in for Latin ones.
_HOMOGRAPH_HOSTS = (
    "b\u0430nk.example",
    "cl\u043eud.example",
    "\u0435xample.com",
    "sh\u043ep.example",
)
_LOCALPARTS = ("billing", "info", "team", "noreply", "support", "orders", "news", "hr")
_MAILERS = ("Postbote 3.2", "Mailwerk 12", "Thunderbird 128.4", "Outlook 16.0")


# --------------------------------------------------------------------------- encoding helpers


def _q_encode(data: bytes) -> str:
    out: list[str] = []
    for byte in data:
        ch = chr(byte)
        if ch.isascii() and (ch.isalnum() or ch in "!*+-/"):
            out.append(ch)
        elif byte == 0x20:
            out.append("_")
        else:
            out.append(f"={byte:02X}")
    return "".join(out)


def _encoded_words(text: str, charset: str, mode: str) -> str:
    """RFC 2047 encoded-words for ``text``, never splitting a character, folded."""
    words: list[str] = []
    chunk = ""
    for ch in text:
        if chunk and len((chunk + ch).encode(charset)) > 36:
            words.append(chunk)
            chunk = ch
        else:
            chunk += ch
    if chunk:
        words.append(chunk)
    encoded: list[str] = []
    for word in words:
        data = word.encode(charset)
        payload = base64.b64encode(data).decode("ascii") if mode == "B" else _q_encode(data)
        encoded.append(f"=?{charset}?{mode}?{payload}?=")
    return "\n ".join(encoded)


def _header_text(text: str, charset: str, rng: random.Random) -> str:
    if text.isascii():
        return text
    if charset in ("us-ascii",):
        charset = "utf-8"
    mode = "Q" if charset == "iso-8859-1" and rng.random() < 0.7 else "B"
    return _encoded_words(text, charset, mode)


def _mailbox_header(name: str, address: str, charset: str, rng: random.Random) -> str:
    if name.isascii():
        return f'"{name}" <{address}>'
    return f"{_header_text(name, charset, rng)} <{address}>"


def _body_encoding(text: str, charset: str, rng: random.Random) -> tuple[str, str]:
    """``(Content-Transfer-Encoding, encoded body)`` for a text part."""
    data = text.encode(charset)
    if data.isascii():
        return "7bit", text
    if charset == "utf-8" and rng.random() < 0.25:
        return "8bit", text
    if charset in ("shift_jis", "koi8-r") or rng.random() < 0.3:
        return "base64", base64.encodebytes(data).decode("ascii")
    return "quoted-printable", quopri.encodestring(data).decode("ascii")


# --------------------------------------------------------------------------- attachments


def _png(rng: random.Random) -> bytes:
    width, height = rng.randrange(8, 48), rng.randrange(8, 48)
    rows = b"".join(b"\x00" + rng.randbytes(width * 3) for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows, 6))
        + chunk(b"IEND", b"")
    )


def _zip(entries: Sequence[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=(2026, 1, 5, 9, 30, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return buffer.getvalue()


def _pdf(rng: random.Random) -> bytes:
    body = rng.randbytes(rng.randrange(1024, 12288))
    return (
        b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
        b"2 0 obj\n<< /Length "
        + str(len(body)).encode()
        + b" >>\nstream\n"
        + body
        + b"\nendstream\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"
    )


def _exe(rng: random.Random) -> bytes:
    stub = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + bytes(48)
    return stub + b"This program cannot be run in DOS mode.\r\r\n$" + rng.randbytes(2048)


def _docx(rng: random.Random, text: str) -> bytes:
    content_types = (
        b'<?xml version="1.0" encoding="UTF-8"?>'
        b'<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        b'<Override PartName="/word/document.xml" ContentType="application/'
        b'vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>'
    )
    document = (
        '<?xml version="1.0" encoding="UTF-8"?><w:document xmlns:w="http://schemas.'
        'openxmlformats.org/wordprocessingml/2006/main"><w:body><w:p><w:r><w:t>'
        f"{html.escape(text)}</w:t></w:r></w:p></w:body></w:document>"
    ).encode()
    return _zip(
        [
            ("[Content_Types].xml", content_types),
            ("word/document.xml", document),
            ("docProps/custom.xml", rng.randbytes(64).hex().encode()),
        ]
    )


_TYPES = {
    "pdf": "application/pdf",
    "png": "image/png",
    "zip": "application/zip",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "docm": "application/vnd.ms-word.document.macroEnabled.12",
    "exe": "application/x-msdownload",
}


@dataclass
class _Attachment:
    filename: str
    content_type: str
    data: bytes


def _benign_attachment(rng: random.Random, lang: _Lang, n: int, text: str) -> _Attachment:
    name = rng.choice(lang.files).format(n=n, q=rng.randrange(1, 5))
    ext = name.rsplit(".", 1)[1]
    if ext == "pdf":
        data = _pdf(rng)
    elif ext == "png":
        data = _png(rng)
    elif ext == "docx":
        data = _docx(rng, text)
    else:
        data = _zip([(f"scan_{i}.png", _png(rng)) for i in range(rng.randrange(1, 3))])
    return _Attachment(name, _TYPES[ext], data)


def _malicious_attachment(rng: random.Random, n: int) -> _Attachment:
    choice = rng.randrange(4)
    if choice == 0:
        return _Attachment(f"invoice_{n}.pdf.exe", "application/octet-stream", _exe(rng))
    if choice == 1:
        return _Attachment(f"payment_{n}.exe", _TYPES["exe"], _exe(rng))
    if choice == 2:
        inner = [(f"invoice_{n}.pdf.exe", _exe(rng))]
        return _Attachment(f"invoice_{n}.zip", _TYPES["zip"], _zip(inner))
    return _Attachment(f"remittance_{n}.docm", _TYPES["docm"], _docx(rng, "Enable editing"))


def _attachment_part(att: _Attachment) -> list[str]:
    if att.filename.isascii():
        params = f'; name="{att.filename}"'
        disposition = f'attachment; filename="{att.filename}"'
    else:
        encoded = quote(att.filename, safe="")
        params = f"; name*=utf-8''{encoded}"
        disposition = f"attachment; filename*=utf-8''{encoded}"
    return [
        f"Content-Type: {att.content_type}{params}",
        f"Content-Disposition: {disposition}",
        "Content-Transfer-Encoding: base64",
        "",
        base64.encodebytes(att.data).decode("ascii").rstrip("\n"),
    ]


# --------------------------------------------------------------------------- URLs and auth


@dataclass
class _Link:
    url: str
    text: str


def _benign_links(rng: random.Random, lang: _Lang, domain: str) -> list[_Link]:
    token = rng.getrandbits(48)
    links = [
        _Link(f"https://www.{domain}/account/{token:x}", rng.choice(lang.link_texts)),
    ]
    if rng.random() < 0.4:
        links.append(_Link(f"https://docs.example.org/help?ref={token % 997}", "docs.example.org"))
    return links


def _phish_links(rng: random.Random, lang: _Lang, brand: str) -> list[_Link]:
    n = rng.randrange(1, 254)
    trick = rng.randrange(5)
    if trick == 0:
        url = f"http://203.0.113.{n}/secure/login.php?session={rng.getrandbits(32):x}"
    elif trick == 1:
        url = f"http://[2001:db8::{n:x}]/verify"
    elif trick == 2:
        url = f"http://{3405803776 + n}/account/confirm"  # 203.0.113.n as one decimal number
    elif trick == 3:
        host = rng.choice(_HOMOGRAPH_HOSTS).encode("idna").decode("ascii")
        url = f"https://{host}/signin"
    else:
        url = f"https://{rng.choice(_LOOKALIKE_DOMAINS)}/verify?id={rng.getrandbits(32):x}"
    if rng.random() < 0.6:
        text = f"https://www.{brand}/account/verify"  # shown text names the real brand
    else:
        text = rng.choice(lang.link_texts)
    return [_Link(url, text)]


def _auth_clause(method: str, result: str, domain: str, rng: random.Random) -> str:
    if method == "spf":
        comment = {
            "pass": f"({MX_AUTHSERV_ID}: domain of {domain} designates sender as permitted)",
            "fail": f"({MX_AUTHSERV_ID}: domain of {domain} does not designate sender)",
            "softfail": "(transitioning domain does not designate sender)",
            "none": "(no SPF record)",
        }[result]
        return f"spf={result} {comment} smtp.mailfrom={domain}"
    if method == "dkim":
        if result == "none":
            return "dkim=none (message not signed)"
        bits = rng.choice((1024, 2048))
        sig = base64.b64encode(rng.randbytes(6)).decode("ascii")
        reason = ' reason="signature verification failed"' if result == "fail" else ""
        return (
            f"dkim={result} ({bits}-bit key){reason} header.d={domain} header.s=s1 header.b={sig}"
        )
    policy = rng.choice(("reject", "quarantine", "none"))
    return f"dmarc={result} (p={policy.upper()} dis=NONE) header.from={domain}"


def _auth_header(authserv: str, results: dict[str, str], domain: str, rng: random.Random) -> str:
    clauses = [_auth_clause(m, r, domain, rng) for m, r in results.items()]
    version = " 1" if rng.random() < 0.2 else ""
    return f"{authserv}{version};\n\t" + ";\n\t".join(clauses)


def _auth_headers(rng: random.Random, kind: str, domain: str) -> tuple[list[str], str]:
    """Authentication-Results header values (top first) and the scenario name."""
    if kind in ("phish", "malware"):
        scenario = rng.choices(["fail", "forged", "softfail", "none", "absent"], [4, 4, 2, 2, 1])[0]
    else:
        scenario = rng.choices(
            ["pass", "softfail", "fail", "none", "forged", "absent"], [62, 8, 6, 8, 4, 12]
        )[0]
    verdicts = {
        "pass": {"spf": "pass", "dkim": "pass", "dmarc": "pass"},
        "softfail": {"spf": "softfail", "dkim": rng.choice(("pass", "none")), "dmarc": "pass"},
        "fail": {"spf": "fail", "dkim": "fail", "dmarc": "fail"},
        "none": {"spf": "none", "dkim": "none", "dmarc": "none"},
        "forged": {"spf": rng.choice(("fail", "softfail")), "dkim": "none", "dmarc": "fail"},
    }
    headers: list[str] = []
    if scenario != "absent":
        headers.append(_auth_header(MX_AUTHSERV_ID, verdicts[scenario], domain, rng))
    if scenario == "forged":
        claimed = {"spf": "pass", "dkim": "pass", "dmarc": "pass"}
        forger = rng.choice((f"mx.{domain}", "mail.protection.example", MX_AUTHSERV_ID + ".test"))
        forged = _auth_header(forger, claimed, domain, rng)
        if rng.random() < 0.25:
            headers = [forged]  # the only header, from an authserv-id we do not trust
        else:
            headers.append(forged)
    return headers, scenario


# --------------------------------------------------------------------------- bodies


@dataclass
class _Body:
    plain: str
    html: str | None
    attachments: list[_Attachment] = field(default_factory=list)


def _paragraphs(rng: random.Random, pool: Sequence[str], k: int) -> list[str]:
    return rng.sample(list(pool), k=min(k, len(pool)))


def _compose(
    rng: random.Random, lang: _Lang, kind: str, name: str, sender: str, links: list[_Link]
) -> _Body:
    pool = lang.phish_lines if kind == "phish" else lang.lines
    paras = _paragraphs(rng, pool, rng.randrange(2, 4))
    greeting = lang.greeting.format(name=name)
    plain_links = [
        f"{link.text}: {link.url}" if link.text != link.url else link.url for link in links
    ]
    plain = "\n\n".join([greeting, *paras, *plain_links, f"{lang.closing}\n{sender}"]) + "\n"
    items = "".join(
        f'<p><a href="{html.escape(link.url)}">{html.escape(link.text)}</a></p>\n' for link in links
    )
    text_html = (
        '<!DOCTYPE html>\n<html><head><meta charset="{charset}"><title></title></head>\n'
        "<body>\n<p>"
        + html.escape(greeting)
        + "</p>\n"
        + "".join(f"<p>{html.escape(p)}</p>\n" for p in paras)
        + items
        + f"<p>{html.escape(lang.closing)}<br>{html.escape(sender)}</p>\n</body></html>\n"
    )
    return _Body(plain=plain, html=text_html)


# --------------------------------------------------------------------------- assembly


def _text_part(subtype: str, text: str, charset: str, rng: random.Random) -> list[str]:
    if subtype == "html":
        text = text.replace("{charset}", charset)
    cte, encoded = _body_encoding(text, charset, rng)
    return [
        f'Content-Type: text/{subtype}; charset="{charset}"',
        f"Content-Transfer-Encoding: {cte}",
        "",
        encoded.rstrip("\n"),
    ]


def _multipart(subtype: str, boundary: str, parts: list[list[str]]) -> list[str]:
    lines = [f'Content-Type: multipart/{subtype}; boundary="{boundary}"', ""]
    if subtype == "mixed":
        lines += ["This is a multi-part message in MIME format.", ""]
    for part in parts:
        lines.append(f"--{boundary}")
        lines.extend(part)
        lines.append("")
    lines.append(f"--{boundary}--")
    return lines


def _break(lines: list[str], how: str, rng: random.Random, outer: str) -> list[str]:
    """Damage an assembled multipart/mixed message (all BROKEN_KINDS but "truncated")."""
    if how == "missing-boundary":
        return [
            line.replace(f'; boundary="{outer}"', "") if line.startswith("Content-Type:") else line
            for line in lines
        ]
    if how == "bad-charset":
        bogus = rng.choice(("x-unknown-8bit", "utf-88", "latin-99", "windows-9999"))
        out: list[str] = []
        done = False
        for line in lines:
            if not done and line.startswith("Content-Type: text/") and "charset=" in line:
                line = line.split("charset=")[0] + f'charset="{bogus}"'
                done = True
            out.append(line)
        return out
    if how == "bad-base64":
        out = list(lines)
        header = next(
            (i for i, line in enumerate(out) if line == "Content-Transfer-Encoding: base64"), None
        )
        if header is not None and header + 2 < len(out):
            rows = out[header + 2].split("\n")  # the encoded body, one element
            middle = len(rows) // 2
            rows[middle] = rows[middle][:30] + "!!%%" + rows[middle][30:]
            rows[-1] = rows[-1].rstrip("=")[:-1]  # lose the padding and one more character
            out[header + 2] = "\n".join(rows)
        return out
    return lines  # "truncated" happens on the finished text, see _truncate


def _truncate(text: str, rng: random.Random) -> str:
    """Cut the message somewhere in the second half of its body, as a broken transfer would."""
    body_start = text.index("\n\n") + 2
    low = body_start + (len(text) - body_start) // 2
    return text[: rng.randrange(low, max(low + 1, len(text) - 20))]


def generate_message(index: int, seed: int = 0, *, broken_ratio: float = 0.08) -> GeneratedMessage:
    """Build message number ``index`` of the stream for ``seed``."""
    rng = random.Random(f"taskwarren-mail:{seed}:{index}")
    kind = rng.choices(["normal", "newsletter", "phish", "malware"], [62, 18, 13, 7])[0]
    lang_code = rng.choices(list(_LANG_WEIGHTS), list(_LANG_WEIGHTS.values()))[0]
    lang = _LANGS[lang_code]
    charset = rng.choice(lang.charsets)
    broken = rng.choice(BROKEN_KINDS) if rng.random() < broken_ratio else None
    n = rng.randrange(1000, 99999)

    brand = rng.choice(_SENDER_DOMAINS)
    domain = rng.choice(_LOOKALIKE_DOMAINS) if kind == "phish" else brand
    sender_name = rng.choice(lang.names)
    sender_addr = f"{rng.choice(_LOCALPARTS)}@{domain}"
    recipient_name = rng.choice(_LANGS["en"].names)
    recipient = f"{recipient_name.split()[0].lower()}@{RECIPIENT_DOMAIN}"
    message_id = f"<{rng.getrandbits(64):016x}.{index}.{seed}@{domain}>"
    when = datetime(2026, 1, 5, tzinfo=UTC) + timedelta(seconds=rng.randrange(30 * 86400))
    tz = timezone(timedelta(hours=rng.choice((0, 1, 9, -5, 3))))
    date = format_datetime(when.astimezone(tz))
    ip = f"198.51.100.{rng.randrange(1, 255)}"
    auth_headers, _ = _auth_headers(rng, kind, domain)

    subjects = lang.phish_subjects if kind == "phish" else lang.subjects
    subject = rng.choice(subjects).format(n=n)
    links = _phish_links(rng, lang, brand) if kind == "phish" else _benign_links(rng, lang, domain)
    body = _compose(rng, lang, kind, recipient_name, sender_name, links)

    if kind == "malware":
        body.attachments.append(_malicious_attachment(rng, n))
    elif kind == "normal" and rng.random() < 0.35:
        for _ in range(rng.choice((1, 1, 2))):
            body.attachments.append(_benign_attachment(rng, lang, n, subject))
    if broken is not None and not body.attachments:
        body.attachments.append(_benign_attachment(rng, lang, n, subject))

    boundary_base = f"=_tw{rng.getrandbits(40):010x}"
    shape = "alternative" if kind in ("newsletter", "phish") else rng.choice(("plain", "alt"))
    text_parts: list[list[str]]
    if shape == "plain" and not body.attachments:
        text_parts = [_text_part("plain", body.plain, charset, rng)]
        content = text_parts[0]
    else:
        alternative = [
            _text_part("plain", body.plain, charset, rng),
            _text_part("html", body.html or "", charset, rng),
        ]
        if shape == "plain":
            alternative = alternative[:1]
        content = (
            _multipart("alternative", boundary_base + "a", alternative)
            if len(alternative) > 1
            else alternative[0]
        )
    if body.attachments:
        parts = [content] + [_attachment_part(a) for a in body.attachments]
        content = _multipart("mixed", boundary_base + "m", parts)

    headers = [
        f"Return-Path: <bounce+{n}@{domain}>",
        (
            f"Received: from mail.{domain} (mail.{domain} [{ip}])\n\tby {MX_AUTHSERV_ID} "
            f"(Postfix) with ESMTPS id {rng.getrandbits(40):010X}\n\tfor <{recipient}>; {date}"
        ),
        *[f"Authentication-Results: {value}" for value in auth_headers],
        f"From: {_mailbox_header(sender_name, sender_addr, charset, rng)}",
        f"To: {_mailbox_header(recipient_name, recipient, charset, rng)}",
        f"Subject: {_header_text(subject, charset, rng)}",
        f"Date: {date}",
        f"Message-ID: {message_id}",
        "MIME-Version: 1.0",
    ]
    if kind == "phish" and rng.random() < 0.5:
        headers.append(f"Reply-To: <helpdesk@{rng.choice(_LOOKALIKE_DOMAINS)}>")
    if kind == "newsletter":
        headers.append(f"List-Unsubscribe: <https://news.example/unsubscribe/{n}>")
    if rng.random() < 0.5:
        headers.append(f"X-Mailer: {rng.choice(_MAILERS)}")

    lines = headers + content
    if broken is not None:
        lines = _break(lines, broken, rng, boundary_base + "m")
    text = "\n".join(lines) + "\n"
    if broken == "truncated":
        text = _truncate(text, rng)
    raw = text.encode("utf-8")
    return GeneratedMessage(index, message_id, raw, kind, lang_code, broken)


def generate_messages(
    n: int, seed: int = 0, *, broken_ratio: float = 0.08
) -> Iterator[GeneratedMessage]:
    """The first ``n`` messages of the stream for ``seed``."""
    for index in range(n):
        yield generate_message(index, seed, broken_ratio=broken_ratio)


def maildir_name(index: int, seed: int) -> str:
    """The Maildir file name of message ``index`` of ``seed``: unique, and reproducible."""
    return f"{_NAME_EPOCH + index}.S{seed}I{index}.taskwarren-generate"


def generate_maildir(
    path: str | os.PathLike[str],
    n: int,
    seed: int = 0,
    *,
    broken_ratio: float = 0.08,
    seen_ratio: float = 0.0,
) -> list[tuple[Path, str]]:
    """Write ``n`` generated messages into the Maildir at ``path`` (created if needed).

    Messages are delivered the Maildir way (written to ``tmp/``, renamed into
    ``new/``); a ``seen_ratio`` share goes to ``cur/`` with the Seen flag, as if
    a mail client had read them. File names come from :func:`maildir_name`, so
    the same seed gives the same files, name and bytes. Unlike a real delivery
    agent this does not fsync each file: it is test data, and the fsyncs would
    make it several times slower. Returns ``(file path, Message-ID)`` per
    message, in generation order.
    """
    root = Path(path)
    mailbox.Maildir(root, factory=None, create=True)
    for sub in ("tmp", "new", "cur"):  # mailbox only makes them when it makes the root
        (root / sub).mkdir(parents=True, exist_ok=True)
    out: list[tuple[Path, str]] = []
    pick = random.Random(f"taskwarren-seen:{seed}")
    for message in generate_messages(n, seed, broken_ratio=broken_ratio):
        name = maildir_name(message.index, seed)
        tmp = root / "tmp" / name
        tmp.write_bytes(message.raw)
        if seen_ratio and pick.random() < seen_ratio:
            target = root / "cur" / f"{name}:2,S"
        else:
            target = root / "new" / name
        os.replace(tmp, target)
        out.append((target, message.message_id))
    return out


@click.command("generate")
@click.argument("path", type=click.Path(file_okay=False, path_type=Path))
@click.option("-n", "--messages", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--broken-ratio", default=0.08, show_default=True, type=click.FloatRange(0, 1))
@click.option("--seen-ratio", default=0.0, show_default=True, type=click.FloatRange(0, 1))
@click.option("--replace", is_flag=True, help="Delete the messages already in PATH first.")
def main(
    path: Path, messages: int, seed: int, broken_ratio: float, seen_ratio: float, replace: bool
) -> None:
    """Write generated test mail into the Maildir PATH."""
    if replace:
        for sub in ("new", "cur", "tmp"):
            folder = path / sub
            for file in folder.iterdir() if folder.is_dir() else ():
                if file.is_file() and file.name != ".gitkeep":
                    file.unlink()
    written = generate_maildir(
        path, messages, seed, broken_ratio=broken_ratio, seen_ratio=seen_ratio
    )
    click.echo(f"wrote {len(written)} messages to {path}")


if __name__ == "__main__":
    main()
