# The portal under gunicorn.  Build:  docker build -t keygen-portal .
#
# PYTHON_IMAGE may be any Debian-like image with python3 (3.11 or newer) and its venv module: the
# official slim image by default, a mirror or a pinned digest (python:3.12-slim@sha256:...), or a
# base built from Debian packages where no registry is reachable (tests/test_container.py does
# that). The portal always runs from a venv in /opt/venv, so every base behaves the same.
# Podman: add --format docker, or the HEALTHCHECK below is dropped (OCI images have none).
ARG PYTHON_IMAGE=python:3.12-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements.txt

FROM ${PYTHON_IMAGE}
# No secret here or in any build argument: settings come from the environment at run time
# (KEYGEN_PRODUCT_TOKEN_FILE=/run/secrets/..., see deploy/compose.yaml).
# gunicorn puts its control socket (for gunicornc) in XDG_RUNTIME_DIR.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    XDG_RUNTIME_DIR=/run/portal \
    BIND=0.0.0.0:8000
RUN groupadd --gid 10001 portal \
 && useradd --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin portal
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# .dockerignore lets in only the portal's modules, templates, static files, compiled
# translations (committed, so the image needs no build step for them) and the check.
COPY *.py ./
COPY templates ./templates
COPY static ./static
COPY data ./data
COPY translations ./translations
COPY deploy/healthcheck.py ./healthcheck.py
# The code stays root's and read-only to the portal; only the default SQLite journal's folder
# and the runtime folder are its own.
RUN install -d -o 10001 -g 10001 -m 0700 /app/instance /run/portal
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["/opt/venv/bin/python", "/app/healthcheck.py"]
ENTRYPOINT ["gunicorn", "--config", "/app/gunicorn.conf.py"]
CMD ["app:create_app()"]
