"""The vendor's look and links on the page: logo, accent colour, support address, terms and
privacy links, and the consent record stored with each Keygen user when terms are configured.

Colours go into a served stylesheet (/brand.css), never inline: the CSP allows no inline style.
An accent colour is only used where it keeps WCAG 2.2 AA contrast in the theme at hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

from config import Settings

# The card's background in style.css, light and dark: what accent-coloured text sits on.
LIGHT_CARD = "#ffffff"
DARK_CARD = "#1b1f26"
TEXT_CONTRAST = 4.5  # WCAG 1.4.3, normal text


@dataclass(frozen=True)
class Brand:
    logo_url: str = ""
    accent: str = ""
    support_email: str = ""
    terms_url: str = ""
    privacy_url: str = ""
    terms_version: str = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> Brand:
        return cls(
            logo_url=settings.brand_logo_url,
            accent=settings.brand_accent_color,
            support_email=settings.support_email,
            terms_url=settings.terms_url,
            privacy_url=settings.privacy_url,
            terms_version=settings.terms_version,
        )

    @property
    def asks_consent(self) -> bool:
        return bool(self.terms_url)

    def consent_record(self, now: datetime | None = None) -> dict[str, str]:
        """What the Keygen user's metadata keeps of a consent: which terms, and when (UTC).
        Keys are camelCase, as Keygen would rewrite them anyway."""
        if not self.asks_consent:
            return {}
        when = (now or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds")
        return {"termsVersion": self.terms_version, "termsAcceptedAt": when.replace("+00:00", "Z")}

    def content_security_policy(self, base: str) -> str:
        """The page's CSP, allowing the logo's origin when the logo is on another site."""
        parts = urlsplit(self.logo_url)
        if parts.scheme != "https":
            return base
        return f"{base}; img-src 'self' https://{parts.netloc}"

    def stylesheet(self) -> str | None:
        """/brand.css: the accent colour for the main button (with black or white text,
        whichever contrasts more), and for links and outlines where it is readable."""
        if not self.accent:
            return None
        black, white = contrast(self.accent, "#000000"), contrast(self.accent, "#ffffff")
        on_accent = "#000000" if black >= white else "#ffffff"
        lines = [f":root {{ --brand: {self.accent}; --brand-text: {on_accent}; }}"]
        for media, card in (
            ("not (prefers-color-scheme: dark)", LIGHT_CARD),
            ("(prefers-color-scheme: dark)", DARK_CARD),
        ):
            if contrast(self.accent, card) >= TEXT_CONTRAST:
                readable = f"--accent: {self.accent}; --focus: {self.accent};"
                lines.append(f"@media {media} {{ :root {{ {readable} }} }}")
        return "\n".join(lines) + "\n"


def luminance(color: str) -> float:
    """Relative luminance of "#rrggbb" (WCAG 2.2, definition of relative luminance)."""
    channels = []
    for i in (1, 3, 5):
        c = int(color[i : i + 2], 16) / 255
        channels.append(c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4)
    red, green, blue = channels
    return 0.2126 * red + 0.7152 * green + 0.0722 * blue


def contrast(a: str, b: str) -> float:
    light, dark = sorted((luminance(a), luminance(b)), reverse=True)
    return (light + 0.05) / (dark + 0.05)
