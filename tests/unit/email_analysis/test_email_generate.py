"""The test-mail generator: deterministic, varied, and honest about what it broke."""

from __future__ import annotations

import mailbox
from collections import Counter
from pathlib import Path

from click.testing import CliRunner

from workers.email_analysis.analysis import analyse
from workers.email_analysis.generate import (
    BROKEN_KINDS,
    SAMPLE_MAILDIR,
    SAMPLE_SETTINGS,
    generate_maildir,
    generate_message,
    generate_messages,
    main,
)

from .helpers import NOW


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.name.startswith(".")
    }


def test_the_same_seed_gives_the_same_bytes() -> None:
    first = [m.raw for m in generate_messages(200, seed=42)]
    second = [m.raw for m in generate_messages(200, seed=42)]

    assert first == second


def test_the_same_seed_gives_the_same_maildir_files(tmp_path: Path) -> None:
    a = generate_maildir(tmp_path / "a", 50, seed=42, seen_ratio=0.3)
    b = generate_maildir(tmp_path / "b", 50, seed=42, seen_ratio=0.3)

    assert [mid for _, mid in a] == [mid for _, mid in b]
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


def test_another_seed_gives_other_mail() -> None:
    assert [m.raw for m in generate_messages(20, seed=1)] != [
        m.raw for m in generate_messages(20, seed=2)
    ]


def test_a_message_does_not_depend_on_how_many_others_are_generated() -> None:
    assert generate_message(7, seed=3) == list(generate_messages(10, seed=3))[7]


def test_message_ids_are_unique() -> None:
    ids = [m.message_id for m in generate_messages(1000, seed=5)]

    assert len(set(ids)) == len(ids)


def test_exactly_the_messages_meant_to_be_broken_are_marked_broken() -> None:
    messages = list(generate_messages(400, seed=9))
    results = [analyse(m.raw, m.message_id, now=NOW) for m in messages]

    assert [r.broken for r in results] == [m.broken is not None for m in messages]
    assert {m.broken for m in messages if m.broken} == set(BROKEN_KINDS)


def test_generated_mail_has_the_promised_variety() -> None:
    messages = list(generate_messages(600, seed=4))
    results = [analyse(m.raw, m.message_id, now=NOW) for m in messages]
    raw = b"".join(m.raw for m in messages)

    content_types = {a.content_type for r in results for a in r.attachments}
    assert {
        "application/pdf",
        "application/zip",
        "application/x-msdownload",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "image/png",
    } <= content_types
    verdicts = Counter(v for r in results for v in (r.auth.spf, r.auth.dkim, r.auth.dmarc))
    assert {"pass", "fail", "none", "softfail", "absent"} <= set(verdicts)
    assert any(r.auth.forged for r in results)
    flags = {f for r in results for u in r.urls for f in u.flags}
    assert flags == {"ip-literal", "punycode", "mismatched-text"}
    for charset in (b"utf-8", b"iso-8859-1", b"shift_jis"):
        assert b"=?" + charset + b"?" in raw, charset
    assert b"multipart/alternative" in raw
    good = [(m, r) for m, r in zip(messages, results, strict=True) if not m.broken]
    assert {r.language for _, r in good} == {"en", "de", "fr", "es", "ja", "ru"}
    assert all(r.language == m.language for m, r in good)
    assert {m.kind for m in messages} == {"normal", "newsletter", "phish", "malware"}
    assert 0.04 < sum(1 for m in messages if m.broken) / len(messages) < 0.14


def test_the_maildir_can_be_read_back_with_the_mailbox_module(tmp_path: Path) -> None:
    written = generate_maildir(tmp_path / "box", 30, seed=1, seen_ratio=0.5)

    box = mailbox.Maildir(tmp_path / "box", factory=None, create=False)
    assert len(box) == 30
    assert sorted(box.get_bytes(key) for key in box.iterkeys()) == sorted(
        path.read_bytes() for path, _ in written
    )
    seen = [path for path, _ in written if path.parent.name == "cur"]
    assert seen
    assert all(path.name.endswith(":2,S") for path in seen)
    assert not list((tmp_path / "box" / "tmp").iterdir())


def test_the_shipped_sample_maildir_is_what_the_generator_writes(tmp_path: Path) -> None:
    generate_maildir(
        tmp_path,
        int(SAMPLE_SETTINGS["n"]),
        int(SAMPLE_SETTINGS["seed"]),
        broken_ratio=SAMPLE_SETTINGS["broken_ratio"],
        seen_ratio=SAMPLE_SETTINGS["seen_ratio"],
    )

    assert _files(SAMPLE_MAILDIR) == _files(tmp_path)
    assert (SAMPLE_MAILDIR / "tmp" / ".gitkeep").is_file()


def test_the_sample_maildir_holds_good_and_broken_mail() -> None:
    box = mailbox.Maildir(SAMPLE_MAILDIR, factory=None, create=False)
    results = [analyse(box.get_bytes(key), now=NOW) for key in box.iterkeys()]

    assert len(results) == 20
    assert 0 < sum(r.broken for r in results) < 10
    assert max(r.score for r in results) >= 60


def test_the_generate_command_writes_a_maildir(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, [str(tmp_path / "out"), "-n", "12", "--seed", "3"])

    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"wrote 12 messages to {tmp_path / 'out'}"
    assert len(list((tmp_path / "out" / "new").iterdir())) == 12
