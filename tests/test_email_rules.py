"""email_rules: which addresses are one mailbox (a test per provider rule), which domains may sign
up, and which count against the per-domain cap."""

from __future__ import annotations

import pytest

from email_rules import (
    DENIED,
    DISPOSABLE,
    NOT_ALLOWED,
    PROVIDERS,
    PUBLIC_PROVIDERS,
    DomainRules,
    canonical,
    disposable_list,
    organisation,
)

# -- The canonical form: one test per rule -------------------------------------------------------


def test_case_and_unicode_compatibility_forms_are_one_address():
    assert canonical("Jane@Example.COM") == "jane@example.com"
    assert canonical("ｊａｎｅ@example.com") == "jane@example.com"  # fullwidth letters: NFKC
    assert canonical("STRASSE@example.com") == canonical("straße@example.com")  # case-folded


def test_an_internationalised_domain_is_compared_in_its_ascii_spelling():
    assert canonical("jane@Bücher.de") == "jane@xn--bcher-kva.de"
    assert canonical("jane@xn--bcher-kva.de") == "jane@xn--bcher-kva.de"


def test_gmail_ignores_dots_and_plus_tags():
    assert canonical("j.a.n.e@gmail.com") == "jane@gmail.com"
    assert canonical("jane+1@gmail.com") == "jane@gmail.com"
    assert canonical("J.ane+trial+2@Gmail.com") == "jane@gmail.com"


def test_googlemail_is_gmail():
    assert canonical("jane@googlemail.com") == "jane@gmail.com"
    assert canonical("ja.ne+x@googlemail.com") == "jane@gmail.com"


@pytest.mark.parametrize("domain", ["outlook.com", "hotmail.com", "live.com", "hotmail.co.uk"])
def test_microsoft_delivers_plus_tags_but_dots_are_part_of_the_name(domain):
    assert canonical(f"jane+1@{domain}") == f"jane@{domain}"
    assert canonical(f"j.ane@{domain}") == f"j.ane@{domain}"


@pytest.mark.parametrize("domain", ["icloud.com", "me.com", "mac.com"])
def test_icloud_delivers_plus_tags_but_dots_are_part_of_the_name(domain):
    assert canonical(f"jane+shop@{domain}") == f"jane@{domain}"
    assert canonical(f"ja.ne@{domain}") == f"ja.ne@{domain}"


@pytest.mark.parametrize("domain", ["proton.me", "protonmail.com", "pm.me"])
def test_proton_ignores_dots_hyphens_underscores_and_plus_tags(domain):
    assert canonical(f"j.a-n_e+x@{domain}") == f"jane@{domain}"


@pytest.mark.parametrize("domain", ["fastmail.com", "zoho.com", "yandex.ru"])
def test_plus_tags_only_at_the_providers_that_document_them(domain):
    assert canonical(f"jane+x@{domain}") == f"jane@{domain}"
    assert canonical(f"ja.ne@{domain}") == f"ja.ne@{domain}"


@pytest.mark.parametrize("domain", ["yahoo.com", "gmx.de", "web.de", "example.com", "acme.co.uk"])
def test_other_domains_keep_every_character(domain):
    """A custom domain's server may treat + and . as part of the name: different mailboxes."""
    assert canonical(f"ja.ne+1@{domain}") == f"ja.ne+1@{domain}"
    assert canonical(f"jane-1@{domain}") == f"jane-1@{domain}"


def test_every_provider_with_a_rule_is_a_public_provider():
    assert set(PROVIDERS) <= PUBLIC_PROVIDERS


# -- Which domains may sign up -------------------------------------------------------------------


def test_disposable_domains_and_their_subdomains_are_refused():
    rules = DomainRules()
    assert rules.refusal("someone@mailinator.com") == DISPOSABLE
    assert rules.refusal("someone@inbox.mailinator.com") == DISPOSABLE
    assert rules.refusal("someone@MAILINATOR.COM") == DISPOSABLE
    assert rules.refusal("someone@mailinator.com.example.org") is None  # a parent, not a child
    assert rules.refusal("someone@example.com") is None


def test_the_disposable_check_can_be_turned_off():
    assert DomainRules(block_disposable=False).refusal("someone@mailinator.com") is None


def test_the_deny_list_covers_subdomains_and_wins_over_the_allow_list():
    rules = DomainRules(deny=frozenset({"rival.com"}), allow=frozenset({"rival.com", "acme.com"}))
    assert rules.refusal("a@rival.com") == DENIED
    assert rules.refusal("a@eu.rival.com") == DENIED
    assert rules.refusal("a@acme.com") is None


def test_with_an_allow_list_only_its_domains_and_their_subdomains_may_sign_up():
    rules = DomainRules(allow=frozenset({"acme.com"}))
    assert rules.refusal("a@acme.com") is None
    assert rules.refusal("a@eu.acme.com") is None
    assert rules.refusal("a@gmail.com") == NOT_ALLOWED
    assert rules.refusal("a@notacme.com") == NOT_ALLOWED


def test_an_allowed_domain_passes_the_disposable_list():
    rules = DomainRules(allow=frozenset({"mailinator.com"}))
    assert rules.refusal("qa@mailinator.com") is None


# -- The per-domain cap ----------------------------------------------------------------------------


def test_the_cap_counts_an_organisation_with_its_subdomains():
    rules = DomainRules()
    assert rules.capped("a@acme.com") == "acme.com"
    assert rules.capped("a@eu.mail.acme.com") == "acme.com"
    assert rules.capped("a@shop.co.uk") == "shop.co.uk"  # not everyone in co.uk together
    assert organisation("x.github.io") == "x.github.io"  # a public suffix of the PSL's own


@pytest.mark.parametrize(
    "email", ["a@gmail.com", "a@hotmail.fr", "a@yahoo.co.jp", "a@icloud.com", "a@web.de"]
)
def test_big_public_providers_are_not_capped(email):
    assert DomainRules().capped(email) is None


def test_allowed_domains_are_not_capped():
    assert DomainRules(allow=frozenset({"acme.com"})).capped("a@eu.acme.com") is None


def test_the_disposable_list_says_its_size_and_version():
    count, version = disposable_list()
    assert count > 1000
    assert version.count(".") == 2
