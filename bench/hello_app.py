"""The control for the render-cost ratio: a bare Flask page, served with the portal's own
gunicorn.conf.py, so that GET-form throughput / hello throughput measures what the portal's page
costs over Flask and gunicorn themselves.

    gunicorn -c gunicorn.conf.py 'bench.hello_app:create_app()'
"""

from __future__ import annotations

from flask import Flask


def create_app() -> Flask:
    app = Flask(__name__)

    @app.get("/")
    def hello():
        return "Hello, World!"

    return app
