# The cloud image: `fleetlearn bridge run`, `fleetlearn trainer run` and the DDP job.
#
#   docker build -f infra/docker/cloud.Dockerfile -t fleetlearn-cloud:0.1.0 .
#
# CUDA runtime and cuDNN from NVIDIA's base, Python 3.12 from Ubuntu 24.04, the package with the
# `cloud` extra (confluent-kafka, boto3, torch, onnx, …) and `data` (the real data sets the
# trainer evaluates every release on). Without a GPU, torch runs on the CPU: the same image
# serves the bridge, the CPU trainer and the GPU one.

# -- build: the project's wheel (pure Python) --------------------------------------------------
FROM python:3.11.13-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bus ./bus
COPY models ./models
COPY edge_agent ./edge_agent
COPY cloud_trainer ./cloud_trainer
COPY fleetlearn ./fleetlearn
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# -- runtime --------------------------------------------------------------------------------------
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ARG EXTRAS=cloud,data
# The user the services run as. Compose passes FLEETLEARN_UID: the secret files it mounts are
# the host user's, mode 600, and the trainer refuses a signing key readable by anyone else.
ARG UID=1000
ARG GID=1000
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/fleetlearn/venv \
    PATH=/opt/fleetlearn/venv/bin:$PATH
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# Ubuntu's images ship a user `ubuntu` with uid 1000: make room for ours.
RUN if id -u ubuntu >/dev/null 2>&1; then userdel --remove ubuntu; fi \
    && groupadd --gid "$GID" fleetlearn \
    && useradd --uid "$UID" --gid "$GID" --home-dir /var/lib/fleetlearn --no-create-home \
        --shell /usr/sbin/nologin fleetlearn \
    && install -d -o fleetlearn -g fleetlearn -m 750 /var/lib/fleetlearn
COPY --from=build /wheels /tmp/wheels
RUN set -eu; \
    python3.12 -m venv "$VIRTUAL_ENV"; \
    pip install "$(echo /tmp/wheels/fleetlearn-*.whl)[$EXTRAS]"; \
    rm -rf /tmp/wheels; \
    fleetlearn --help >/dev/null
COPY --chmod=0755 infra/docker/entrypoint.sh /usr/local/bin/entrypoint.sh
USER fleetlearn
WORKDIR /var/lib/fleetlearn
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
CMD ["fleetlearn", "--help"]
