# syntax=docker/dockerfile:1
# One image per PSI function, built from the repository root:
#   docker build --build-arg FUNCTION_DIR=stock_in -t ghcr.io/psi-functions/stock-in:0.1.0 .
# FUNCTION_DIR is baked in as the default; FUNCTION_SOURCE / FUNCTION_TARGET at run time
# still choose any other function (see shared_lib/wsgi.py). Listens on $PORT (8080).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Compilers only here, for any dependency without a wheel for the target platform.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared_lib ./shared_lib
COPY functions ./functions
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && pip install /wheels/*.whl

FROM ${PYTHON_IMAGE} AS runtime
ARG FUNCTION_DIR=""
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PORT=8080 \
    FUNCTION_TARGET=handle \
    FUNCTION_DIR=${FUNCTION_DIR} \
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
