"""SPF, DKIM and DMARC verdicts from Authentication-Results headers, and forgeries."""

from __future__ import annotations

from workers.email_analysis.analysis import (
    AnalysisConfig,
    analyse,
    evaluate_auth,
    parse_authentication_results,
)

from .helpers import NOW, mail

OURS = "mx.taskwarren.test"


def test_a_pass_from_the_trusted_mx_gives_pass_verdicts() -> None:
    verdicts = evaluate_auth(
        [
            (
                f"{OURS}; spf=pass smtp.mailfrom=example.com; dkim=pass header.d=example.com;"
                " dmarc=pass header.from=example.com"
            )
        ]
    )

    assert (verdicts.spf, verdicts.dkim, verdicts.dmarc) == ("pass", "pass", "pass")
    assert verdicts.authserv_id == OURS
    assert verdicts.forged is False


def test_comments_versions_and_quoted_reasons_are_understood() -> None:
    header = parse_authentication_results(
        f"{OURS} 1 (our (nested) mx; says hi);"
        " spf = softfail (domain of x; does not = designate) smtp.mailfrom=shop.example;"
        ' dkim=fail reason="signature; verification failed" header.d=shop.example;'
        " dmarc=FAIL (p=REJECT dis=NONE) header.from=shop.example"
    )

    assert header.authserv_id == OURS
    assert header.trusted is True
    assert [(r.method, r.result) for r in header.results] == [
        ("spf", "softfail"),
        ("dkim", "fail"),
        ("dmarc", "fail"),
    ]
    assert header.results[0].properties == {"smtp.mailfrom": "shop.example"}
    assert header.results[1].reason == "signature; verification failed"
    assert header.results[2].properties == {"header.from": "shop.example"}


def test_a_pass_claimed_by_an_untrusted_authserv_id_counts_as_forged() -> None:
    verdicts = evaluate_auth(
        [
            f"{OURS}; spf=fail smtp.mailfrom=bank.example; dkim=none; dmarc=fail",
            "mail.bank.example; spf=pass; dkim=pass header.d=bank.example; dmarc=pass",
        ]
    )

    assert (verdicts.spf, verdicts.dkim, verdicts.dmarc) == ("fail", "none", "fail")
    assert verdicts.forged is True
    assert "dmarc=pass claimed by untrusted authserv-id mail.bank.example" in (
        verdicts.forged_reasons
    )


def test_an_untrusted_header_alone_leaves_the_verdicts_absent_and_forged() -> None:
    verdicts = evaluate_auth(["mx.bank.example; spf=pass; dkim=pass; dmarc=pass"])

    assert (verdicts.spf, verdicts.dkim, verdicts.dmarc) == ("absent", "absent", "absent")
    assert verdicts.authserv_id is None
    assert verdicts.forged is True


def test_an_untrusted_header_that_claims_no_pass_is_not_a_forgery() -> None:
    verdicts = evaluate_auth([f"{OURS}; spf=pass", "relay.example; spf=fail; dkim=none"])

    assert verdicts.forged is False


def test_a_second_header_with_our_authserv_id_claiming_a_pass_we_did_not_give_is_forged() -> None:
    verdicts = evaluate_auth([f"{OURS}; dmarc=fail header.from=x.example", f"{OURS}; dmarc=pass"])

    assert verdicts.dmarc == "fail"
    assert verdicts.forged is True
    assert verdicts.forged_reasons == [f"second {OURS} header claims dmarc=pass"]


def test_several_dkim_signatures_pass_when_any_of_them_passes() -> None:
    verdicts = evaluate_auth(
        [f"{OURS}; dkim=fail header.d=list.example; dkim=pass header.d=example.com"]
    )

    assert verdicts.dkim == "pass"


def test_authserv_id_with_none_reports_no_results() -> None:
    header = parse_authentication_results(f"{OURS}; none")

    assert header.results == []
    assert evaluate_auth([f"{OURS}; none"]).spf == "absent"


def test_the_trusted_authserv_id_is_configurable() -> None:
    value = "mx.corp.example; spf=pass; dkim=pass; dmarc=pass"
    config = AnalysisConfig(trusted_authserv_ids=frozenset({"MX.Corp.Example"}))

    assert evaluate_auth([value], config).dmarc == "pass"
    assert evaluate_auth([value], config).forged is False
    assert evaluate_auth([value]).forged is True  # not trusted by default


def test_the_trusted_authserv_ids_can_come_from_the_environment() -> None:
    config = AnalysisConfig.from_env(
        {"EMAIL_ANALYSIS_TRUSTED_AUTHSERV_IDS": " mx1.corp.example, mx2.corp.example ,"}
    )

    assert config.trusted_authserv_ids == frozenset({"mx1.corp.example", "mx2.corp.example"})
    assert AnalysisConfig.from_env({}).trusted_authserv_ids == frozenset({OURS})


def test_a_message_with_a_forged_header_below_ours_gets_our_verdicts_and_the_forgery() -> None:
    raw = mail(
        f"""
        Authentication-Results: {OURS};
        \tspf=fail (sender not permitted) smtp.mailfrom=bank.example;
        \tdkim=none (message not signed);
        \tdmarc=fail (p=REJECT) header.from=bank.example
        Authentication-Results: mail.protection.example;
        \tspf=pass smtp.mailfrom=bank.example; dkim=pass; dmarc=pass
        From: Bank <security@bank.example>
        Subject: verify
        Message-ID: <f1@bank.example>

        Please verify your account.
        """
    )

    result = analyse(raw, now=NOW)

    assert (result.auth.spf, result.auth.dkim, result.auth.dmarc) == ("fail", "none", "fail")
    assert result.auth.forged is True
    assert [h.authserv_id for h in result.auth.headers] == [OURS, "mail.protection.example"]
    assert "dmarc=fail +30" in result.reasons
    assert any(r.startswith("forged Authentication-Results") for r in result.reasons)


def test_a_message_without_authentication_results_has_absent_verdicts() -> None:
    result = analyse(mail("From: a@example.com\nSubject: hi\n\nhello\n"), now=NOW)

    assert (result.auth.spf, result.auth.dkim, result.auth.dmarc) == ("absent",) * 3
    assert "no Authentication-Results from a trusted server +10" in result.reasons
