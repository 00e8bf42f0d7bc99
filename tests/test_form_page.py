"""The signup form page, rendered once per process and filled in per visitor (views.Stencil):
every visitor gets their own CSRF token, nonce and serve time, in a page that is otherwise the
one the template renders."""

from __future__ import annotations

import re

from support.http import csrf_token_from, form_data, hidden, issued_key


def test_each_visitor_gets_their_own_token_nonce_and_serve_time(app):
    pages = [app.test_client().get("/") for _ in range(3)]
    assert all(page.status_code == 200 for page in pages)
    texts = [page.get_data(as_text=True) for page in pages]
    for name in ("nonce", "served"):
        assert len({hidden(text, name) for text in texts}) == 3, name
    assert len({csrf_token_from(text) for text in texts}) == 3
    # Apart from those three values, every visitor sees the very same page.
    blanked = {
        re.sub(r'value="[^"]*" type="hidden"|type="hidden" value="[^"]*"', "", t) for t in texts
    }
    assert len(blanked) == 1
    assert all(page.headers["Cache-Control"] == "no-store" for page in pages)
    assert all("Cookie" in page.headers["Vary"] for page in pages)


def test_the_filled_in_page_is_the_one_the_template_renders(app):
    from flask import render_template

    from forms import SignupForm

    client = app.test_client()
    served = client.get("/").get_data(as_text=True)
    with app.test_request_context("/"):
        form = SignupForm()
        form.csrf_token.current_token = csrf_token_from(served)
        form.nonce.data, form.served.data = hidden(served, "nonce"), hidden(served, "served")
        assert render_template("signup.html", form=form) == served


def test_every_visitors_form_is_accepted(app, keygen):
    browsers = [app.test_client() for _ in range(2)]
    pages = [browser.get("/").get_data(as_text=True) for browser in browsers]
    for index, (browser, page) in enumerate(zip(browsers, pages, strict=True)):
        data = form_data(email=f"visitor{index}@example.com")
        data.update(csrf_token=csrf_token_from(page), nonce=hidden(page, "nonce"))
        data["served"] = hidden(page, "served")
        assert browser.post("/", data=data).status_code == 200
    assert len(keygen.licenses()) == 2


def test_each_language_gets_its_own_page_whoever_came_first(app):
    client = app.test_client()
    english = client.get("/", headers={"Accept-Language": "en"}).get_data(as_text=True)
    german = client.get("/", headers={"Accept-Language": "de"}).get_data(as_text=True)
    again = client.get("/", headers={"Accept-Language": "en"}).get_data(as_text=True)
    assert '<html lang="en">' in english and '<html lang="en">' in again
    assert '<html lang="de">' in german
    assert "Create account and get my key" in english
    assert "Create account and get my key" not in german


def test_the_key_page_is_the_one_the_template_renders_for_each_person(app, keygen):
    """The key page is filled in the same way: each person sees their own name, address and
    key, escaped as the template would, in their own language."""
    from flask import render_template
    from markupsafe import escape

    from outcomes import Issued

    people = [("<b>Zoë</b>", "zoe@example.com", "en"), ("ねこ", "neko@example.com", "de")]
    for first_name, email, language in people:
        client = app.test_client()
        headers = {"Accept-Language": language}
        page = client.get("/", headers=headers).get_data(as_text=True)
        data = form_data(first_name=first_name, email=email)
        data.update(csrf_token=csrf_token_from(page), nonce=hidden(page, "nonce"))
        data["served"] = hidden(page, "served")
        shown = client.post("/", data=data, headers=headers).get_data(as_text=True)
        key = issued_key(shown)
        with app.test_request_context("/", headers=headers):
            issued = Issued(email, key, license_id="", signup_id="")
            expected = render_template("issued.html", issued=issued, first_name=first_name)
        assert shown == expected
        assert f'<html lang="{language}">' in shown
        assert "<b>" not in shown and str(escape(first_name)) in shown


def test_the_pages_token_and_cookie_are_the_ones_flask_and_flask_wtf_read(app):
    """Flask-WTF's own check accepts the page's CSRF token, and Flask's stock session interface
    reads its cookie and writes one the portal reads, so that a rollback or a mixed fleet keeps
    every open form working."""
    from flask import session
    from flask.sessions import SecureCookieSessionInterface
    from flask_wtf.csrf import generate_csrf, validate_csrf

    client = app.test_client()
    page = client.get("/").get_data(as_text=True)
    cookie = client.get_cookie("session").value
    stock = SecureCookieSessionInterface().get_signing_serializer(app)
    raw = stock.loads(cookie)["csrf_token"]
    assert len(raw) == 40
    with app.test_request_context("/", headers={"Cookie": f"session={cookie}"}):
        app.preprocess_request()
        assert session["csrf_token"] == raw
        validate_csrf(csrf_token_from(page))  # raises if Flask-WTF cannot read it
        # Flask-WTF's generate_csrf makes a token for the same raw value that ours reads.
        issued_by_flask_wtf = generate_csrf()
    ours = app.session_interface.get_signing_serializer(app)
    assert ours.loads(stock.dumps({"csrf_token": raw}))["csrf_token"] == raw
    # A payload long enough for itsdangerous to compress it still reads.
    assert ours.loads(stock.dumps({"csrf_token": "a" * 400}))["csrf_token"] == "a" * 400
    data = form_data(email="stock@example.com")
    data.update(csrf_token=issued_by_flask_wtf, nonce=hidden(page, "nonce"))
    data["served"] = hidden(page, "served")
    assert client.post("/", data=data).status_code == 200
