"""The emulator as a Flask app: the Keygen API under /v1/, the control plane under /_emulator/.

The control plane lets tests that run the emulator as another process read its state, inject
faults, set a rate limit, add or delete policies and reset it.
"""

from __future__ import annotations

import logging
import os

import flask

from keygen_emulator.faults import DropMiddleware
from keygen_emulator.routes import Api
from keygen_emulator.seeds import from_environment
from keygen_emulator.state import Emulator

_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def create_app(emulator: Emulator | None = None) -> flask.Flask:
    """The emulator as a WSGI app; without an Emulator, one seeded from EMULATOR_* variables."""
    if emulator is None:
        emulator = from_environment(os.environ)
    app = flask.Flask(__name__)
    app.extensions["keygen_emulator"] = emulator
    app.wsgi_app = DropMiddleware(app.wsgi_app)
    _register_control_plane(app, emulator)

    @app.route("/", defaults={"path": ""}, methods=_METHODS)
    @app.route("/<path:path>", methods=_METHODS)
    def api(path: str) -> flask.Response:
        return Api(emulator, flask.request).run()

    _silence_access_log()
    return app


def _body() -> dict:
    data = flask.request.get_json(silent=True)
    return data if isinstance(data, dict) else {}


def _refused(error: Exception) -> tuple[flask.Response, int]:
    return flask.jsonify(error=str(error)), 400


def _register_control_plane(app: flask.Flask, emulator: Emulator) -> None:
    body, refused = _body, _refused

    @app.get("/_emulator/state")
    def state():
        return flask.jsonify(emulator.snapshot())

    @app.post("/_emulator/faults")
    def add_fault():
        fields = body()
        try:
            emulator.inject(fields.pop("route", ""), **fields)
        except (TypeError, ValueError) as error:
            return refused(error)
        return "", 204

    @app.delete("/_emulator/faults")
    def clear_faults():
        emulator.clear_faults()
        return "", 204

    @app.post("/_emulator/reset")
    def reset():
        emulator.reset()
        return "", 204

    @app.post("/_emulator/rate-limit")
    def rate_limit():
        fields = body()
        try:
            emulator.set_rate_limit(fields.get("limit"), int(fields.get("period", 30)))
        except (TypeError, ValueError) as error:
            return refused(error)
        return "", 204

    _register_policies(app, emulator)
    _register_deployment(app, emulator)
    _register_self_service(app, emulator, body, refused)


def _register_policies(app: flask.Flask, emulator: Emulator) -> None:
    @app.post("/_emulator/policies")
    def add_policy():
        fields = _body()
        try:
            policy = emulator.add_policy(
                str(fields.get("account", "")),
                str(fields.get("product", "")),
                protected=fields.get("protected"),
                name=fields.get("name"),
            )
        except (KeyError, TypeError, ValueError) as error:
            return _refused(error)
        return flask.jsonify(id=policy), 201

    @app.delete("/_emulator/policies/<policy_id>")
    def delete_policy(policy_id: str):
        emulator.delete_policy(policy_id)
        return "", 204


def _register_deployment(app: flask.Flask, emulator: Emulator) -> None:
    """The deployment's switches (deployment.py); reset() restores Keygen Cloud's."""

    @app.post("/_emulator/deployment")
    def configure():
        try:
            emulator.configure(**_body())
        except (TypeError, ValueError) as error:
            return _refused(error)
        return "", 204

    @app.post("/_emulator/accounts/<account>/state")
    def account_state(account: str):
        try:
            emulator.set_account_state(account, **_body())
        except (KeyError, TypeError, ValueError) as error:
            return _refused(error)
        return "", 204

    @app.post("/_emulator/jobs")
    def run_jobs():
        emulator.run_jobs()
        return "", 204


def _register_self_service(app: flask.Flask, emulator: Emulator, body, refused) -> None:
    """Machines, second factors, bans and webhook endpoints (self_service.py)."""

    @app.post("/_emulator/machines")
    def add_machine():
        fields = body()
        try:
            machine = emulator.add_machine(str(fields.pop("license", "")), **fields)
        except (KeyError, TypeError, ValueError) as error:
            return refused(error)
        return flask.jsonify(id=machine), 201

    @app.post("/_emulator/users/<user>/ban")
    def ban_user(user: str):
        try:
            emulator.ban_user(user)
        except KeyError as error:
            return refused(error)
        return "", 204

    @app.post("/_emulator/users/<user>/second-factor")
    def second_factor(user: str):
        try:
            return flask.jsonify(secret=emulator.enable_second_factor(user)), 201
        except KeyError as error:
            return refused(error)

    @app.post("/_emulator/webhook-endpoints")
    def add_webhook_endpoint():
        fields = body()
        try:
            endpoint = emulator.add_webhook_endpoint(
                str(fields.get("account", "")),
                str(fields.get("url", "")),
                subscriptions=tuple(fields.get("subscriptions") or ("*",)),
            )
        except (KeyError, TypeError, ValueError) as error:
            return refused(error)
        return flask.jsonify(endpoint), 201


class _AccessLogFilter(logging.Filter):
    """Drops werkzeug's per-request lines: request lines can hold emails."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).rstrip().endswith('"%s" %s %s')


def _silence_access_log() -> None:
    logger = logging.getLogger("werkzeug")
    if not any(isinstance(f, _AccessLogFilter) for f in logger.filters):
        logger.addFilter(_AccessLogFilter())
