"""gunicorn settings for the portal: threads, because a signup mostly waits on Keygen."""

import os

bind = os.environ.get("BIND", "127.0.0.1:8000")
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
# Must exceed SIGNUP_DEADLINE (20 s by default) plus a read-back, so no signup is killed midway.
timeout = 30
graceful_timeout = 30
keepalive = 5
accesslog = "-"
errorlog = "-"
