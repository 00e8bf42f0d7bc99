"""What a signup submission is, and what it can come to: the outcomes the pages show and the
errors that say what the person (or an operator) can do about a signup that did not complete."""

from __future__ import annotations

from dataclasses import dataclass, field

from i18n import N_

EMAIL_TAKEN = N_("An account with this email already exists.")

# (field, kind) from Keygen's 422 -> (form field, what we tell the person).
MESSAGES: dict[tuple[str | None, str | None], tuple[str, str]] = {
    ("email", "taken"): ("email", EMAIL_TAKEN),
    ("email", "invalid"): ("email", N_("Enter a valid email address, like name@example.com.")),
    ("email", "too_long"): ("email", N_("This email address is too long.")),
    ("password", "too_short"): ("password", N_("This password is too short.")),
    ("password", "too_long"): ("password", N_("This password is too long.")),
    ("first_name", "too_long"): ("first_name", N_("Use at most 255 characters.")),
    ("last_name", "too_long"): ("last_name", N_("Use at most 255 characters.")),
}


@dataclass(frozen=True)
class Applicant:
    """A well-formed submission: what the form checked, in the shape Keygen wants."""

    email: str
    password: str = field(repr=False)
    first_name: str
    last_name: str
    consent: dict[str, str] = field(default_factory=dict)  # kept in the user's metadata
    locale: str | None = None  # the page's language: the emails this signup owes are in it


@dataclass(frozen=True)
class Issued:
    """Show this key now: it is the one and only time."""

    email: str
    license_key: str = field(repr=False)
    license_id: str
    signup_id: str


@dataclass(frozen=True)
class AlreadyIssued:
    """This submission was completed before, and its key was shown then."""

    email: str


@dataclass(frozen=True)
class Processing:
    """Not finished yet; it will be finished in the background."""

    email: str


@dataclass(frozen=True)
class CheckInbox:
    """The page says "check your inbox" and nothing else: ``about`` is what the email brings
    ("verify": a link to confirm the address; "key": the license key). With ENUMERATION_SAFE
    an address that already has an account gets this same outcome (and an email saying so)."""

    email: str
    about: str
    # Why an address was answered like this instead of being signed up (for the metrics only).
    refusal: str | None = field(default=None, compare=False)


Outcome = Issued | AlreadyIssued | Processing | CheckInbox


class SignupError(Exception):
    """The signup did not complete. Subclasses say what the person can do about it."""


class Rejected(SignupError):
    """The person can fix the submission: ``errors`` maps form fields to messages. ``refusal``
    names a reason the metrics count apart ("same_person"), if any."""

    def __init__(self, errors: dict[str, str], *, refusal: str | None = None):
        self.errors = errors
        self.refusal = refusal
        super().__init__(", ".join(f"{name} rejected" for name in errors))


class TryLater(SignupError):
    """Keygen could not be reached in time, and nothing exists yet. Trying again may work."""


class SignupUnavailable(SignupError):
    """The portal or Keygen is misconfigured. An operator must act; the log says what."""


class TooBusy(SignupError):
    """Every slot for talking to Keygen is taken (Keygen is slow). Nothing was written."""


class LinkUsed(SignupError):
    """A verification link whose signup went on without it: verified before, or expired."""
