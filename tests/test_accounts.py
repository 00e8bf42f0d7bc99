"""Self-service through the test client against the emulator over HTTP: signing in as the person,
the account page with their licenses and machines, freeing a machine (and never someone else's),
signing out, the session's end, and what a signed-in browser may not do."""

from __future__ import annotations

import base64
import json
import re
import zlib

import pytest
from markupsafe import escape
from sqlalchemy import select

from account_sessions import account_sessions
from app import create_app
from services import services
from support.accounts import csrf_of, customer, machine_ids, sign_in, staff_member
from support.http import csrf_token_from, form_data
from support.leaks import PASSWORD, secret
from support.otp import totp
from support.portal import make_settings

LAPTOP = {
    "name": "Clark's laptop",
    "platform": "macOS",
    "hostname": "kent-mbp",
    "fingerprint": "a1" * 16,
}
DESKTOP = {
    "name": "Office PC",
    "platform": "Windows",
    "hostname": "dp-04",
    "fingerprint": "b2" * 16,
}
WRONG = "The email address or password is not right"


@pytest.fixture
def build(keygen):
    def make(**changes):
        site = create_app(make_settings(keygen, **changes))
        if services(site).accounts is not None:
            services(site).accounts.floor = 0.0  # test_account_timing.py measures the real one
        return site

    return make


@pytest.fixture
def site(build):
    return build()


@pytest.fixture
def browser(site):
    return site.test_client()


@pytest.fixture
def clark(keygen):
    return customer(
        keygen, "clark@example.com", keygen.policy, keygen.policy, machines={0: [LAPTOP, DESKTOP]}
    )


def text(response) -> str:
    return response.get_data(as_text=True)


def tokens_of(keygen, user_id: str) -> list[dict]:
    return [t for t in keygen.emulator.tokens(keygen.account) if t["bearer_id"] == user_id]


# -- Signing in ------------------------------------------------------------------------------


def test_signing_in_shows_each_license_its_masked_key_and_its_machines(browser, keygen, clark):
    keygen.emulator.add_policy(keygen.account, keygen.product)  # unused: never listed
    lois = customer(keygen, "lois@example.com", machines={0: [{"name": "Lois's PC"}]})
    elsewhere = customer(keygen, "clark2@example.com", keygen.other_policy)
    response = sign_in(browser, "Clark@Example.com")
    assert response.status_code == 303 and response.headers["Location"] == "/account"
    page = text(browser.get("/account"))
    first, second = clark.keys(keygen)
    assert page.count('class="license"') == 2
    for key in (first, second):
        assert '<code class="license-key"' in page and key in page
        assert key[:6] + "••••••••••••" in page  # the masked form shown until revealed
    assert page.index("<details") < page.index(first)  # only inside the reveal
    for machine in (LAPTOP, DESKTOP):
        assert str(escape(machine["name"])) in page and machine["platform"] in page
        assert machine["hostname"] in page
    assert "a1a1a1a1…a1a1" in page  # the fingerprint, shortened
    assert "Activated " in page and "Sign out" in page
    assert "Lois" not in page and lois.keys(keygen)[0] not in page
    assert elsewhere.keys(keygen)[0] not in page


def test_more_than_a_page_of_machines_is_all_shown(browser, keygen):
    """A license for a whole office: 130 machines come in two of Keygen's pages of 100."""
    office = [{"name": f"Desk {n:03}", "created": 1_000 + n} for n in range(130)]
    kent = customer(keygen, "kent@example.com", machines={0: office})
    sign_in(browser, kent.email)
    before = len(keygen.emulator.requests)
    page = text(browser.get("/account"))
    assert all(f"Desk {n:03}" in page for n in range(130))
    reads = [r for r in keygen.emulator.requests[before:] if r["route"] == "machines.index"]
    assert len(reads) == 2


def test_the_account_page_is_read_with_the_persons_own_token(browser, keygen, clark):
    sign_in(browser, clark.email)
    before = len(keygen.emulator.requests)
    browser.get("/account")
    calls = keygen.emulator.requests[before:]
    # The product token only says which product it is (once per process), nothing of the person.
    assert [(r["route"], r["bearer_type"]) for r in calls if r["route"] == "me"] == [
        ("me", "products")
    ]
    reads = [r for r in calls if r["route"] != "me"]
    assert {r["route"] for r in reads} == {"licenses.index", "machines.index", "policies.show"}
    assert {r["bearer_type"] for r in reads} == {"users"}
    browser.get("/account")
    assert [r for r in keygen.emulator.requests[before:] if r["route"] == "me"] == calls[:1]


def test_the_token_stays_on_the_server_encrypted_and_the_cookie_holds_an_opaque_id(
    site, browser, keygen, clark
):
    response = sign_in(browser, clark.email)
    [token] = tokens_of(keygen, clark.user_id)
    session = session_of(response.headers["Set-Cookie"])
    assert set(session) <= {"_user_id", "_fresh", "_id", "csrf_token"}
    assert not session["_user_id"].startswith("user-")
    with services(site).journal.engine.connect() as db:
        [row] = db.execute(select(account_sessions)).mappings().all()
    assert row["id"] != session["_user_id"]  # only its hash
    assert row["token_id"] == token["id"] and not row["token"].startswith("user-")
    assert token["name"] == "Signup portal session" and token["expiry"] is not None


@pytest.mark.parametrize(
    "case", ["wrong password", "unknown address", "banned", "no password", "staff member"]
)
def test_every_refused_sign_in_gets_the_same_answer(browser, keygen, clark, case):
    email, password = clark.email, PASSWORD
    if case == "wrong password":
        password = "not-the-password"
    elif case == "unknown address":
        email = "nobody@example.com"
    elif case == "banned":
        keygen.emulator.ban_user(clark.user_id)
    elif case == "no password":
        email = customer(keygen, "nopass@example.com", password=None).email
    else:
        email = "dev@example.com"
        staff_member(keygen, email)
    response = sign_in(browser, email, password)
    assert response.status_code == 422
    page = re.sub(r'name="csrf_token" type="hidden" value="[^"]+"', "", text(response))
    assert WRONG in page and f'value="{email}"' in page
    assert browser.get("/account").status_code == 303  # not signed in
    minted = [t for t in keygen.emulator.tokens(keygen.account) if t["bearer_type"] == "users"]
    assert [t for t in minted if t["name"] == "Signup portal session"] == []  # staff: revoked
    other = sign_in(browser.application.test_client(), "someone-else@example.com", "x")
    baseline = re.sub(r'name="csrf_token" type="hidden" value="[^"]+"', "", text(other))
    assert page == baseline.replace("someone-else@example.com", email)


def test_a_second_factor_is_asked_for_after_the_password(browser, keygen, clark):
    secret_seed = keygen.emulator.enable_second_factor(clark.user_id)
    page = text(sign_in(browser, clark.email))
    assert "Enter your code" in page and PASSWORD not in page
    assert browser.get("/account").status_code == 303
    pending = re.search(r'name="pending" type="hidden" value="([^"]+)"', page).group(1)
    data = {"csrf_token": csrf_token_from(page), "pending": pending}
    wrong = browser.post("/sign-in/code", data={**data, "code": "12345"})
    assert wrong.status_code == 422 and "The code has 6 digits." in text(wrong)
    code = totp(secret_seed)
    bad = f"{(int(code) + 1) % 1_000_000:06d}"
    refused = browser.post("/sign-in/code", data={**data, "code": bad})
    assert refused.status_code == 422 and "That code is not right" in text(refused)
    done = browser.post("/sign-in/code", data={**data, "code": code[:3] + " " + code[3:]})
    assert done.status_code == 303 and done.headers["Location"] == "/account"
    assert clark.email in text(browser.get("/account"))


def test_a_second_step_with_a_forged_or_old_pending_value_starts_over(browser, keygen, clark):
    keygen.emulator.enable_second_factor(clark.user_id)
    page = text(sign_in(browser, clark.email))
    data = {"csrf_token": csrf_token_from(page), "pending": "forged", "code": "123456"}
    response = browser.post("/sign-in/code", data=data)
    assert response.status_code == 303 and response.headers["Location"] == "/sign-in"
    assert "That took too long" in text(browser.get("/sign-in"))


def test_keygen_down_is_a_503_and_nobody_is_signed_in(browser, keygen, clark):
    keygen.emulator.inject("tokens.create", status=503)
    response = sign_in(browser, clark.email)
    assert response.status_code == 503
    assert browser.get("/account").status_code == 303


# -- Freeing a machine -----------------------------------------------------------------------


def test_freeing_a_machine_asks_first_then_deletes_it_with_the_product_token(
    browser, keygen, clark
):
    sign_in(browser, clark.email)
    laptop, desktop = machine_ids(keygen, clark.licenses[0])
    confirm = browser.get(f"/account/machines/{laptop}/free")
    assert confirm.status_code == 200
    assert "Free this device?" in text(confirm) and "Yes, free this device" in text(confirm)
    assert machine_ids(keygen, clark.licenses[0]) == [laptop, desktop]  # asking changes nothing
    before = len(keygen.emulator.requests)
    response = browser.post(
        f"/account/machines/{laptop}/free", data={"csrf_token": csrf_token_from(text(confirm))}
    )
    assert response.status_code == 303 and response.headers["Location"] == "/account"
    assert machine_ids(keygen, clark.licenses[0]) == [desktop]
    calls = [(r["route"], r["bearer_type"]) for r in keygen.emulator.requests[before:]]
    assert calls[-1] == ("machines.destroy", "products")
    assert ("machines.show", "users") in calls and ("licenses.show", "users") in calls
    page = text(browser.get("/account"))
    assert "Clark&#39;s laptop is no longer activated" in page
    assert page.count('class="machine"') == 1


def test_nobody_frees_a_machine_of_someone_elses_license_whatever_id_they_post(
    build, keygen, clark
):
    browser = build(ratelimit_deactivations="100/day").test_client()
    lois = customer(keygen, "lois@example.com", machines={0: [{"name": "Lois's PC"}]})
    mine_elsewhere = customer(keygen, "c2@example.com", keygen.other_policy)
    [hers] = machine_ids(keygen, lois.licenses[0])
    keygen.emulator.add_machine(mine_elsewhere.licenses[0], name="x", fingerprint="elsewhere")
    sign_in(browser, clark.email)
    token = csrf_of(browser, "/account")
    laptop = machine_ids(keygen, clark.licenses[0])[0]
    attempts = [
        hers,
        hers.upper(),
        "a1" * 16,  # the fingerprint of one of Clark's own: Keygen would look it up by it
        clark.licenses[0],
        lois.licenses[0],
        "00000000-0000-0000-0000-000000000000",
        f"{laptop}/../{hers}",
        "../../machines/" + hers,
    ]
    for attempt in attempts:
        for method in ("GET", "POST"):
            response = browser.open(
                f"/account/machines/{attempt}/free", method=method, data={"csrf_token": token}
            )
            assert response.status_code == 404, (attempt, method)
    assert machine_ids(keygen, lois.licenses[0]) == [hers]
    assert len(keygen.emulator.machines(keygen.account)) == 4


def test_a_machine_of_the_persons_license_of_another_product_is_not_theirs_here(browser, keygen):
    person = customer(keygen, "c@example.com", keygen.other_policy, machines={0: [LAPTOP]})
    [machine] = machine_ids(keygen, person.licenses[0])
    sign_in(browser, person.email)
    assert browser.get(f"/account/machines/{machine}/free").status_code == 404
    assert "has no licenses yet" in text(browser.get("/account"))


def test_keygen_refusing_the_deactivation_is_said_in_plain_words(browser, keygen, clark):
    sign_in(browser, clark.email)
    laptop = machine_ids(keygen, clark.licenses[0])[0]
    token = csrf_of(browser, f"/account/machines/{laptop}/free")
    refusal = [{"title": "Unprocessable resource", "detail": "cannot be deleted yet", "code": "X"}]
    keygen.emulator.inject("machines.destroy", status=422, errors=refusal)
    response = browser.post(f"/account/machines/{laptop}/free", data={"csrf_token": token})
    assert response.status_code == 409
    assert "did not allow this device to be freed" in text(response)
    assert "Reference:" in text(response) and "cannot be deleted yet" not in text(response)
    assert laptop in machine_ids(keygen, clark.licenses[0])


def test_a_machine_freed_meanwhile_is_said_so(browser, keygen, clark):
    sign_in(browser, clark.email)
    laptop = machine_ids(keygen, clark.licenses[0])[0]
    token = csrf_of(browser, f"/account/machines/{laptop}/free")
    keygen.emulator.inject("machines.destroy", status=404)
    response = browser.post(f"/account/machines/{laptop}/free", data={"csrf_token": token})
    assert response.status_code == 303
    assert "had been freed already" in text(browser.get("/account"))


def test_deactivations_are_limited_per_person(build, keygen, clark):
    browser = build(ratelimit_deactivations="1/day").test_client()
    sign_in(browser, clark.email)
    laptop, desktop = machine_ids(keygen, clark.licenses[0])
    token = csrf_of(browser, "/account")
    first = browser.post(f"/account/machines/{laptop}/free", data={"csrf_token": token})
    assert first.status_code == 303
    response = browser.post(f"/account/machines/{desktop}/free", data={"csrf_token": token})
    assert response.status_code == 429
    assert "No more devices can be freed today" in text(response)
    assert machine_ids(keygen, clark.licenses[0]) == [desktop]


def test_freeing_needs_the_forms_csrf_token(browser, keygen, clark):
    sign_in(browser, clark.email)
    laptop = machine_ids(keygen, clark.licenses[0])[0]
    assert browser.post(f"/account/machines/{laptop}/free").status_code == 400
    assert laptop in machine_ids(keygen, clark.licenses[0])


# -- Signing out, expiry ---------------------------------------------------------------------


def test_signing_out_revokes_the_token_at_keygen(browser, keygen, clark):
    sign_in(browser, clark.email)
    [token] = tokens_of(keygen, clark.user_id)
    response = browser.post("/sign-out", data={"csrf_token": csrf_of(browser, "/account")})
    assert response.status_code == 303 and response.headers["Location"] == "/sign-in"
    assert tokens_of(keygen, clark.user_id) == []
    revoke = [r for r in keygen.calls("tokens.destroy")][-1]
    assert revoke["status"] == 204 and revoke["bearer_type"] == "users"
    assert token["id"] in revoke["path"]
    assert browser.get("/account").status_code == 303
    assert "You have signed out." in text(browser.get("/sign-in"))


def test_a_sign_in_expires_and_its_token_is_revoked_then(site, browser, keygen, clark):
    journal = services(site).journal
    sign_in(browser, clark.email)
    assert browser.get("/account").status_code == 200
    now = journal.clock()
    journal.clock = lambda: now + 30 * 60 + 1
    response = browser.get("/account")
    assert response.status_code == 303 and response.headers["Location"] == "/sign-in"
    assert tokens_of(keygen, clark.user_id) == []


def test_the_sweep_ends_sign_ins_nobody_comes_back_to(site, keygen, clark):
    journal = services(site).journal
    sign_in(site.test_client(), clark.email)
    sign_in(site.test_client(), clark.email)
    assert len(tokens_of(keygen, clark.user_id)) == 2
    assert services(site).accounts.sweep() == 0
    now = journal.clock()
    journal.clock = lambda: now + 31 * 60
    assert services(site).accounts.sweep() == 2
    assert tokens_of(keygen, clark.user_id) == []


def test_a_token_keygen_no_longer_takes_ends_the_sign_in(browser, keygen, clark):
    sign_in(browser, clark.email)
    keygen.emulator.ban_user(clark.user_id)
    response = browser.get("/account")
    assert response.status_code == 303 and response.headers["Location"] == "/sign-in"
    assert "Your sign-in has ended" in text(browser.get("/sign-in"))


# -- What a signed-in browser may not do, and SELF_SERVICE=false -----------------------------


def test_a_signed_in_browser_creates_no_second_account_or_license(browser, keygen, clark):
    form = text(browser.get("/"))
    sign_in(browser, clark.email)
    users, licenses = len(keygen.users()), len(keygen.licenses())
    assert browser.get("/").headers["Location"] == "/account"
    data = form_data(email="second@example.com")
    data["csrf_token"] = csrf_of(browser, "/account")
    nonce = re.search(r'name="nonce" type="hidden" value="([^"]+)"', form).group(1)
    for values in (data, {**data, "nonce": nonce}):
        response = browser.post("/", data=values)
        assert response.status_code == 303 and response.headers["Location"] == "/account"
    assert (len(keygen.users()), len(keygen.licenses())) == (users, licenses)
    assert "Sign out first to create another account." in text(browser.get("/account"))


def test_the_key_page_and_the_form_link_to_signing_in(browser):
    assert 'href="/sign-in"' in text(browser.get("/"))
    page = browser.get("/")
    data = form_data(csrf_token=csrf_token_from(text(page)))
    issued = text(browser.post("/", data=data))
    assert "Sign in to manage your licenses" in issued and 'href="/sign-in"' in issued


def test_self_service_off_removes_every_page_and_link(build, keygen, clark):
    site = build(self_service=False)
    browser = site.test_client()
    for path in ("/sign-in", "/account", "/forgot-password", "/reset", "/reset/x"):
        assert browser.get(path).status_code == 404, path
    assert browser.post("/sign-out").status_code == 404
    assert browser.post("/webhooks/keygen", data=b"{}").status_code == 404
    form = text(browser.get("/"))
    assert "/sign-in" not in form and "Sign in" not in form
    issued = text(browser.post("/", data=form_data(csrf_token=csrf_token_from(form))))
    assert "Sign in" not in issued and "/sign-in" not in issued
    assert services(site).accounts is None


def test_sign_in_is_limited_per_address_and_per_email(build, keygen, clark):
    site = build(ratelimit_sign_in_per_ip="4/minute", ratelimit_sign_in_per_email="2/minute")
    browser = site.test_client()
    statuses = [sign_in(browser, clark.email, "wrong").status_code for _ in range(3)]
    assert statuses == [422, 422, 429]
    assert sign_in(browser, "other@example.com", "x").status_code == 422
    assert sign_in(browser, "third@example.com", "x").status_code == 429  # the address's 4
    assert len(keygen.calls("tokens.create")) == 3


def test_the_sign_in_limit_per_email_counts_the_mailbox(build, keygen):
    """jane+1@gmail.com and j.ane@googlemail.com reach jane@gmail.com's mailbox: one bucket."""
    site = build(ratelimit_sign_in_per_ip="100/minute", ratelimit_sign_in_per_email="2/minute")
    browser = site.test_client()
    spellings = ["jane@gmail.com", "jane+1@gmail.com", "j.ane@googlemail.com"]
    assert [sign_in(browser, email, "wrong").status_code for email in spellings] == [422, 422, 429]


def test_the_limits_fail_closed_when_their_storage_is_down(build, keygen, clark):
    browser = build(ratelimit_storage_uri="redis://127.0.0.1:1/0").test_client()
    response = sign_in(browser, clark.email)
    assert response.status_code == 503
    assert keygen.calls("tokens.create") == []


def test_no_secret_reaches_a_page_header_or_redirect(browser, keygen, clark):
    response = sign_in(browser, clark.email)
    [minted] = tokens_of(keygen, clark.user_id)
    with services(browser.application).journal.engine.connect() as db:
        [row] = db.execute(select(account_sessions)).mappings().all()
    token = services(browser.application).accounts.sessions.sealer.unseal(row["token"])
    secret(token)
    assert token.startswith("user-")
    for answer in (response, browser.get("/account"), browser.get("/sign-in")):
        assert token not in text(answer) and token not in str(answer.headers)
    assert minted["id"] == row["token_id"]


def test_keygen_limiting_password_attempts_holds_up_no_signup(browser, keygen, clark):
    """Keygen counts a person's password attempts apart from the product token's calls."""
    keygen.emulator.inject("tokens.create", retry_after=60)
    assert sign_in(browser, clark.email).status_code == 429
    other = browser.application.test_client()
    page = other.get("/")
    data = form_data(email="new@example.com", csrf_token=csrf_token_from(text(page)))
    response = other.post("/", data=data)
    assert response.status_code == 200 and 'id="license-key"' in text(response)


def test_a_visitor_who_never_signs_in_has_only_the_csrf_token_in_the_session(browser):
    """Self-service adds nothing to a signup visitor's session cookie."""
    cookie = browser.get("/").headers["Set-Cookie"]
    assert set(session_of(cookie)) == {"csrf_token", "binding"}  # binding: views.SESSION_BINDING
    assert "Set-Cookie" not in browser.get("/lost-key").headers  # an error page, rendered


def session_of(set_cookie: str) -> dict:
    """The JSON in Flask's signed session cookie (payload.timestamp.signature)."""
    payload = set_cookie.split("=", 1)[1].split(";")[0]
    data = payload.lstrip(".").split(".")[0]
    raw = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
    return json.loads(zlib.decompress(raw) if payload.startswith(".") else raw)
