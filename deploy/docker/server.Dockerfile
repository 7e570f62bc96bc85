# syntax=docker/dockerfile:1
# digitserve-server: the gRPC model server.
#
#   docker build -f deploy/docker/server.Dockerfile -t digitserve-server:0.1.0 .
#   docker run --rm --read-only --tmpfs /tmp -v "$PWD/models:/models:ro" \
#     -p 8500:8500 -p 8501:8501 digitserve-server:0.1.0
#
# Two stages: the builder installs the package with its `server` extra into a
# virtual environment; the final image holds that environment on a bare
# python:3.11-slim (no pip run, no compiler, no package manager step), runs as
# uid 10001 and writes nothing outside /tmp, so it runs with a read-only root
# file system. The model repository is mounted at /models (read-only is enough).
# No HEALTHCHECK: Kubernetes probes the gRPC health service itself (see deploy/k8s).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/digitserve
RUN python -m venv "$VIRTUAL_ENV"
WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps everything else out).
COPY pyproject.toml README.md ./
COPY protos ./protos
COPY client ./client
COPY server ./server
COPY trainer ./trainer
# Every dependency has a manylinux wheel: nothing is compiled here either. The
# environment's own pip goes once the install is done: the final image installs nothing.
RUN "$VIRTUAL_ENV/bin/pip" install --only-binary=:all: --no-binary=digitserve ".[server]" \
 && "$VIRTUAL_ENV/bin/digitserve-server" --help > /dev/null \
 && "$VIRTUAL_ENV/bin/python" -m pip uninstall --yes --quiet pip

FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="digitserve-server" \
      org.opencontainers.image.description="gRPC serving of a TensorFlow MNIST classifier" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 digitserve \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /tmp --shell /usr/sbin/nologin digitserve
COPY --from=builder /opt/digitserve /opt/digitserve
# HOME=/tmp: Keras and TensorFlow look for a config folder under HOME; /tmp is the one
# writable path (an emptyDir in Kubernetes, --tmpfs /tmp with docker run --read-only).
ENV PATH=/opt/digitserve/bin:$PATH \
    HOME=/tmp \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    DIGITSERVE_MODEL_REPO=/models \
    DIGITSERVE_GIT_COMMIT=${GIT_COMMIT}
WORKDIR /tmp
USER 10001:10001
# gRPC (DIGITSERVE_PORT) and Prometheus /metrics (DIGITSERVE_METRICS_PORT).
EXPOSE 8500 8501
ENTRYPOINT ["/opt/digitserve/bin/digitserve-server"]
