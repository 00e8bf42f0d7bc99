# The portal under gunicorn. Build: docker build -t keygen-portal .
# The base image is an argument so that a mirror or a pinned digest can be used.
ARG PYTHON_IMAGE=python:3.12-slim
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BIND=0.0.0.0:8000

WORKDIR /app
COPY requirements.txt ./
RUN python -m pip install -r requirements.txt
COPY app.py config.py forms.py keygen_api.py signup.py keygen_emulator.py gunicorn.conf.py ./
COPY templates ./templates
COPY static ./static

RUN useradd --system --uid 10001 --no-create-home portal
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["gunicorn", "-c", "gunicorn.conf.py", "app:create_app()"]
