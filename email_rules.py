"""Which addresses are the same person, and which domains may sign up: the canonical form of an
address, the disposable-mail list, the operator's allow and deny lists, and the big public
providers that the per-domain cap leaves alone. No I/O: the lists ship with their packages.

The canonical form is only ever compared, never mailed: Keygen and every email keep the address
the person typed.
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass
from functools import cache
from importlib.metadata import version

import idna
from disposable_email_domains import blocklist as _DISPOSABLE
from publicsuffixlist import PublicSuffixList

# The Keygen user's metadata key that holds the canonical form (camelCase, as Keygen shows it).
METADATA_KEY = "canonicalEmail"
DISPOSABLE_PACKAGE = "disposable-email-domains"


@dataclass(frozen=True)
class Provider:
    """How a mail provider delivers: ``plus`` if user+tag@ reaches user@, the characters its
    local parts ignore, and the domain its alias domains are folded into."""

    plus: bool = False
    ignores: str = ""
    home: str | None = None


def _names(text: str) -> list[str]:
    return text.split()


# Each row is the provider's documented behaviour; tests/test_email_rules.py has a test per rule.
# Google: dots don't matter in Gmail addresses, user+tag@ reaches user@, and googlemail.com is
# the same mailbox as gmail.com.
_GMAIL = Provider(plus=True, ignores=".", home="gmail.com")
_MICROSOFT = Provider(plus=True)  # plus addressing in Outlook.com and Exchange Online
_APPLE = Provider(plus=True)  # iCloud Mail delivers user+tag@ to user@
# Proton: +aliases (proton.me/support/addresses-and-aliases); dots, hyphens and underscores do
# not make another address (ProtonMail/WebClients, removeEmailAlias).
_PROTON = Provider(plus=True, ignores="._-")
_PLUS_ONLY = Provider(plus=True)  # Fastmail, Zoho, Yandex: documented plus addressing
_MICROSOFT_DOMAINS = _names("""
    outlook.com hotmail.com live.com msn.com passport.com hotmail.co.uk hotmail.fr hotmail.de
    hotmail.it hotmail.es hotmail.nl hotmail.be hotmail.ca hotmail.com.au hotmail.com.br
    hotmail.co.jp outlook.fr outlook.de outlook.it outlook.es outlook.co.uk outlook.jp
    outlook.com.br outlook.com.au live.co.uk live.fr live.de live.it live.nl live.be live.ca
    live.com.au live.jp
""")
PROVIDERS: dict[str, Provider] = {
    "gmail.com": _GMAIL,
    "googlemail.com": _GMAIL,
    **dict.fromkeys(_MICROSOFT_DOMAINS, _MICROSOFT),
    **dict.fromkeys(("icloud.com", "me.com", "mac.com"), _APPLE),
    **dict.fromkeys(("proton.me", "protonmail.com", "protonmail.ch", "pm.me"), _PROTON),
    **dict.fromkeys(("fastmail.com", "fastmail.fm", "zohomail.com", "zoho.com"), _PLUS_ONLY),
    **dict.fromkeys(("yandex.ru", "yandex.com", "ya.ru"), _PLUS_ONLY),
}

# Large public mail providers: one of their domains is millions of unrelated people, so the
# per-domain cap (RATELIMIT_PER_DOMAIN) does not count them. Yahoo, AOL, GMX and web.de have no
# canonical rule: their tags (Yahoo's "-keyword" addresses) have a base of their own.
PUBLIC_PROVIDERS = frozenset(
    [
        *PROVIDERS,
        *_names("""
            yahoo.com yahoo.co.uk yahoo.fr yahoo.de yahoo.it yahoo.es yahoo.co.jp yahoo.ca
            yahoo.com.br yahoo.com.au yahoo.in ymail.com rocketmail.com aol.com aim.com
            gmx.de gmx.net gmx.com gmx.at gmx.ch web.de t-online.de freenet.de posteo.de
            mail.com mail.ru bk.ru inbox.ru list.ru rambler.ru yandex.by yandex.kz yandex.ua
            qq.com 163.com 126.com sina.com naver.com daum.net hanmail.net
            orange.fr free.fr laposte.net sfr.fr wanadoo.fr libero.it virgilio.it
            tutanota.com tuta.io hey.com comcast.net att.net verizon.net rediffmail.com
        """),
    ]
)


def canonical(email: str) -> str:
    """The address's canonical form: NFKC, case-folded, then the provider's own rules. Two
    addresses with the same canonical form reach the same mailbox."""
    local, _, domain = unicodedata.normalize("NFKC", email).casefold().rpartition("@")
    domain = ascii_domain(domain)
    provider = PROVIDERS.get(domain)
    if provider is None:
        return f"{local}@{domain}"
    if provider.plus:
        local = local.partition("+")[0]
    for ignored in provider.ignores:
        local = local.replace(ignored, "")
    return f"{local}@{provider.home or domain}"


def person_key(canonical_form: str) -> str:
    """A mailbox as the journal keeps it while its account is being created: a hash, not the
    address."""
    return hashlib.sha256(canonical_form.encode()).hexdigest()


def ascii_domain(domain: str) -> str:
    """The domain in its ASCII (punycode) spelling, lower case, without a trailing dot."""
    domain = domain.strip().rstrip(".").lower()
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError:
        return domain  # the form refused what IDNA cannot spell; compare it as it is


def domain_of(email: str) -> str:
    return ascii_domain(email.rpartition("@")[2])


def within(domain: str, listed: frozenset[str] | set[str]) -> bool:
    """Whether ``domain`` or one of its parent domains is in ``listed``."""
    labels = domain.split(".")
    return any(".".join(labels[i:]) in listed for i in range(len(labels)))


@cache
def _suffixes() -> PublicSuffixList:
    return PublicSuffixList()  # the list the package bundles; no download


def organisation(domain: str) -> str:
    """The registrable domain (mail.acme.co.uk -> acme.co.uk): the per-domain cap counts an
    organisation's subdomains together, or a catch-all domain's owner would use endless ones."""
    return _suffixes().privatesuffix(domain) or domain


# -- Which domains may sign up ------------------------------------------------------------------

DISPOSABLE, DENIED, NOT_ALLOWED = "disposable_email", "domain_denied", "domain_not_allowed"


@dataclass(frozen=True)
class DomainRules:
    """EMAIL_DOMAINS_ALLOW, EMAIL_DOMAINS_DENY and BLOCK_DISPOSABLE_EMAIL, each with the
    subdomains of what it lists. An allowed domain passes the disposable list too: the
    operator's own word comes first."""

    allow: frozenset[str] = frozenset()
    deny: frozenset[str] = frozenset()
    block_disposable: bool = True

    def refusal(self, email: str) -> str | None:
        """Why this address may not sign up (DISPOSABLE, DENIED, NOT_ALLOWED), or None."""
        domain = domain_of(email)
        if within(domain, self.deny):
            return DENIED
        if self.allow:
            return None if within(domain, self.allow) else NOT_ALLOWED
        if self.block_disposable and within(domain, _DISPOSABLE):
            return DISPOSABLE
        return None

    def capped(self, email: str) -> str | None:
        """The organisation whose signups RATELIMIT_PER_DOMAIN counts, or None for the public
        providers and the domains the operator allowed by name."""
        domain = domain_of(email)
        if within(domain, PUBLIC_PROVIDERS) or within(domain, self.allow):
            return None
        return organisation(domain)


def disposable_list() -> tuple[int, str]:
    """How many domains the bundled disposable list holds, and the package's version."""
    return len(_DISPOSABLE), version(DISPOSABLE_PACKAGE)
