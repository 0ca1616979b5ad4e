# syntax=docker/dockerfile:1
# The one image of every PSI function, built from the repository root:
#   docker build -t ghcr.io/psi-functions/psi:0.1.0 .        (make image)
# The function is chosen when a container starts: FUNCTION_DIR=stock_in (stack.yml and the
# Knative Services set it), or FUNCTION_SOURCE / FUNCTION_TARGET (see shared_lib/wsgi.py).
# Listens on $PORT (8080). Installs exactly requirements.lock (hashes checked), then the
# runtime package without dependencies: no test or local-stack tool is in the image.
# The base image is pinned by digest (python:3.11-slim, linux/amd64, arm64, ...); move it
# forward with `docker buildx imagetools inspect python:3.11-slim`.
ARG PYTHON_IMAGE=python:3.11-slim@sha256:90744cff8f32887f075c47d747a173ff333e9e98801667af93c357fa9f5e28ff

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Compilers only here, for any dependency without a wheel for the target platform.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY requirements.lock ./
RUN pip install --require-hashes --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY shared_lib ./shared_lib
COPY functions ./functions
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && pip install --no-deps /wheels/*.whl \
 && pip check

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PORT=8080 \
    FUNCTION_TARGET=handle \
    PSI_DATA_DIR=/tmp/psi-data
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app app
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY gunicorn.conf.py ./
COPY functions ./functions
# bytecode ahead of time: PYTHONDONTWRITEBYTECODE keeps a start from writing it
RUN python -m compileall -q /app/functions
USER 10001:10001
EXPOSE 8080
STOPSIGNAL SIGTERM
CMD ["gunicorn", "--config", "/app/gunicorn.conf.py", "shared_lib.wsgi:app"]
