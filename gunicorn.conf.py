"""gunicorn settings for the portal: threads, because a signup mostly waits on Keygen."""

import gc
import os
import shutil
import sys
import tempfile

# The portal's modules (logs.py for the log format) sit beside this file, wherever gunicorn is
# started from.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# Not `import config`: gunicorn reads every top-level name here as a setting, and has one called
# config.
from config import load_some as _load_settings

_settings = _load_settings(
    "WEB_CONCURRENCY",
    "GUNICORN_THREADS",
    "TRUSTED_PROXY_HOPS",
    "TRUSTED_PROXIES",
    "LOG_FORMAT",
    "DEMO_MODE",
)

bind = os.environ.get("BIND", "127.0.0.1:8000")
# gunicorn's gthread worker, except that a connection's closing handshake waits in its event loop
# instead of stalling it for up to 2 s per client (http_worker.py).
worker_class = "http_worker.ThreadWorker"
workers = _settings["web_concurrency"]
threads = _settings["gunicorn_threads"]
# Must exceed SIGNUP_DEADLINE (20 s by default) plus a read-back, so no signup is killed midway.
timeout = 30
graceful_timeout = 30
keepalive = 5
accesslog = "-"
errorlog = "-"

# gunicorn itself believes X-Forwarded-Proto (and sets https) from forwarded_allow_ips, loopback by
# default. The portal trusts forwarded headers only with TRUSTED_PROXY_HOPS, from TRUSTED_PROXIES
# (protection.py); gunicorn must not be more trusting, or a client on this machine could claim
# https while the portal ignores forwarded headers.
forwarded_allow_ips = (
    ",".join(_settings["trusted_proxies"]) if _settings["trusted_proxy_hops"] else ""
)

# gunicorn's own lines in the portal's JSON format (logs.py), unless LOG_FORMAT=text (config.py),
# with secrets masked either way (logs.RedactSecrets). Access lines carry the request id the
# portal echoed in X-Request-ID (logs.py reads it from the line's {x-request-id}o field).
access_log_format = '%(h)s "%(r)s" %(s)s %(B)s %(M)sms "%(a)s"'


_json_lines = _settings["log_format"] == "json"
_formatter = (
    {"()": "logs.JsonFormatter"}
    if _json_lines
    else {"format": "%(asctime)s [%(process)d] [%(levelname)s] %(message)s"}
)
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"redact": {"()": "logs.RedactSecrets"}},
    "formatters": {"portal": _formatter},
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "formatter": "portal", "filters": ["redact"]},
        "stdout": {
            "class": "logging.StreamHandler",
            "formatter": "portal",
            "filters": ["redact"],
            "stream": "ext://sys.stdout",
        },
    },
    "root": {"handlers": ["stderr"], "level": "INFO"},
    "loggers": {
        "gunicorn.error": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        "gunicorn.access": {"handlers": ["stdout"], "level": "INFO", "propagate": False},
    },
}

# Prometheus metrics of every worker (metrics.py): each worker writes its counts to files in
# PROMETHEUS_MULTIPROC_DIR and a scrape of any worker adds them all up. Unless the operator names
# a directory (it must be emptied before each start), a fresh one per start, removed at the end.
# Set here, in the master, before any worker imports prometheus_client.
_own_metrics_dir = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _own_metrics_dir:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="portal-metrics-")
os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)


def when_ready(server):
    """With METRICS_PORT, Prometheus reads every worker's metrics from the master, on that port
    of the portal's own interface; the portal's port then answers /metrics with 404."""
    settings = _load_settings("METRICS_PORT", "DATABASE_URL")
    port = settings["metrics_port"]
    if port:
        import database
        import journal
        import metrics

        host = _interface(server.cfg.bind[0])
        instance = os.path.join(os.path.dirname(os.path.abspath(__file__)), "instance")
        url = settings["database_url"] or database.default_url(instance)
        metrics.serve_separately(port, host, journal.Journal(url))
        server.log.info("Metrics at: http://%s:%d/metrics", host, port)


def _interface(bind: str) -> str:
    """The host part of gunicorn's first bind address; loopback for a Unix socket."""
    if bind.startswith(("unix:", "fd://")):
        return "127.0.0.1"
    host = bind.rsplit(":", 1)[0] if ":" in bind else bind
    return host.strip("[]") or "0.0.0.0"  # noqa: S104 (BIND already chose every interface)


def post_worker_init(worker):
    """What loading the app made lives as long as the worker: frozen out of the garbage
    collector's passes, which then look only at what requests make (as Instagram does)."""
    gc.collect()
    gc.freeze()


def child_exit(server, worker):
    """A dead worker's gauges (the breaker) stop counting; its counters are kept."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _own_metrics_dir:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
