"""A branded portal (accent colour, logo, support address, terms and privacy links) against its
own Keygen emulator, served from threads on loopback ports. For the accessibility tests and
scripts/screenshots.py, which must see every part of the page."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from werkzeug.serving import make_server

from app import create_app
from config import Settings
from keygen_emulator import Emulator, serve

BRANDING = dict(
    product_name="Acme Pro",
    brand_accent_color="#0f766e",
    brand_logo_url="/static/example-logo.svg",
    support_email="help@acme.example",
    terms_url="https://acme.example/terms",
    terms_version="2025-01",
    privacy_url="https://acme.example/privacy",
)


@contextmanager
def branded_portal(secret_key: str, **changes) -> Iterator[str]:
    """Yields the portal's URL; everything is stopped on exit."""
    with branded_world(secret_key, **changes) as (url, _emulator, _ids):
        yield url


@contextmanager
def branded_world(secret_key: str, **changes) -> Iterator[tuple[str, Emulator, dict]]:
    """The portal's URL, its emulator and the ids in it (account, product, policy)."""
    emulator = Emulator()
    account = emulator.add_account(slug="acme")
    product, token = emulator.add_product(account, name="Acme Pro")
    policy = emulator.add_policy(account, product, name="Acme Pro, yearly", protected=True)
    # A folder of its own, not tmp_path: scripts/screenshots.py runs this outside pytest.
    with serve(emulator) as keygen, tempfile.TemporaryDirectory(prefix="portal-branded-") as home:
        settings = Settings(
            keygen_api_url=keygen.url,
            keygen_account_id=account,
            keygen_product_token=token,
            keygen_policy_id=policy,
            secret_key=secret_key,
            cookie_secure=False,
            database_url=f"sqlite:///{home}/portal.db",
            reconcile_interval=0.0,
            ratelimit_per_ip="1000/minute",  # every visit comes from 127.0.0.1
            **{**BRANDING, **changes},
        )
        server = make_server("127.0.0.1", 0, create_app(settings), threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True, name="branded")
        thread.start()
        ids = {"account": account, "policy": policy, "keygen_url": keygen.url}
        try:
            yield f"http://127.0.0.1:{server.port}", emulator, ids
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
