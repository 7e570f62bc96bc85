# syntax=docker/dockerfile:1
# digitserve-trainer: trains, checks (quality gate) and publishes a model version;
# also carries `digitserve-model` (labels, rollback, prune) for repository jobs.
#
#   docker build -f deploy/docker/trainer.Dockerfile -t digitserve-trainer:0.1.0 .
#   docker run --rm --read-only --tmpfs /tmp -v "$PWD/models:/models" \
#     -v "$PWD/../shared/datasets/mnist:/data:ro" -e DIGITSERVE_DATA_DIR=/data \
#     digitserve-trainer:0.1.0 --profile quick --min-accuracy 0.97
#
# Same layout as server.Dockerfile: a builder stage installs the `train` extra into
# a virtual environment, the final python:3.11-slim stage only copies it, runs as
# uid 10001 and writes only to /tmp and to the model repository mounted at /models.
# Exit codes: 0 published, 1 error, 2 invalid settings, 3 refused by the quality gate.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/digitserve
RUN python -m venv "$VIRTUAL_ENV"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos ./protos
COPY client ./client
COPY server ./server
COPY trainer ./trainer
# Wheels only (nothing compiled); the environment's own pip goes once the install is done.
RUN "$VIRTUAL_ENV/bin/pip" install --only-binary=:all: --no-binary=digitserve ".[train]" \
 && "$VIRTUAL_ENV/bin/digitserve-train" --help > /dev/null \
 && "$VIRTUAL_ENV/bin/digitserve-model" --help > /dev/null \
 && "$VIRTUAL_ENV/bin/python" -m pip uninstall --yes --quiet pip

FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="digitserve-trainer" \
      org.opencontainers.image.description="Trains and publishes digitserve MNIST models" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 digitserve \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /tmp --shell /usr/sbin/nologin digitserve
COPY --from=builder /opt/digitserve /opt/digitserve
# HOME=/tmp: the Keras MNIST download cache (~/.keras) and Matplotlib's config and
# font cache (~/.config/matplotlib) go to the one writable path.
ENV PATH=/opt/digitserve/bin:$PATH \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    DIGITSERVE_MODEL_REPO=/models \
    DIGITSERVE_PROGRESS=plain
WORKDIR /tmp
USER 10001:10001
ENTRYPOINT ["/opt/digitserve/bin/digitserve-train"]
