# Crystal colour service image.
#
# Stage "build" converts the source models to ONNX and runs the parity tests on them, so an image
# is never built from ONNX files that failed parity. Stage "runtime" holds only what serving
# needs: the packages of requirements.lock, serve/, the ONNX files made by stage "build", and
# labels.txt.
#
#   docker build -t crystal-serving:1.0.0 .
#   docker run --rm -p 3000:3000 -p 8081:8081 crystal-serving:1.0.0

ARG PYTHON_IMAGE=python:3.11-slim-trixie

FROM ${PYTHON_IMAGE} AS build

# An extra package index for pip, empty by default. The pinned torch is served in a CPU-only
# build from PyTorch's own wheel index; pass that index here to keep the build stage small.
ARG PIP_EXTRA_INDEX_URL=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# make runs the export exactly as developers do; Debian's current make is all it needs.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src

# The dependency layer first: it is rebuilt only when a requirements file changes.
COPY requirements.txt ./
COPY export/requirements.txt export/
COPY tests/requirements.txt tests/
RUN pip install --no-cache-dir -r tests/requirements.txt

# The models to convert and serve, as `make export` takes them: NAME=PATH or NAME=FRAMEWORK:PATH,
# paths inside the build context (the Makefile's default list).
ARG MODELS="sklearn=export/sources/sklearn.joblib pytorch=export/sources/pytorch.pt"

COPY . .
# VENV=/usr/local: the Makefile's tools are this image's own python and pip, installed above.
RUN make export VENV=/usr/local MODELS="${MODELS}" \
    && python -m pytest -p no:cacheprovider tests/export/test_export_*.py

FROM ${PYTHON_IMAGE} AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=3000 \
    WEB_CONCURRENCY=2

RUN groupadd --system --gid 10001 crystal \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin crystal

WORKDIR /app

# requirements.txt's pins and all they pull in, each file checked against its sha256: a changed
# or substituted wheel of the same version fails the build (`make lock` writes the file).
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock

# Owned by root and read-only for the service user.
COPY serve/ serve/
COPY labels.txt ./
COPY --from=build /src/onnx_models/ onnx_models/

USER 10001:10001
EXPOSE 3000 8081

# Readiness: every model loaded, verified and warmed up. slim has no curl; python is enough.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '3000') + '/v2/health/ready', timeout=2)"]

CMD ["python", "-m", "serve"]
