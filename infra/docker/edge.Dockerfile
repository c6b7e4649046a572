# The edge agent's image, for devices and for the compose fleet's simulated devices.
#
#   docker buildx build --platform linux/arm64,linux/amd64 -f infra/docker/edge.Dockerfile .
#
# By default only the `edge` extra (paho-mqtt, onnxruntime, cryptography: no torch, no Kafka
# client, no boto3): a device that serves and follows releases. The simulated devices add local
# training and the replayed data set: --build-arg EXTRAS=edge,edge-train,data (torch then
# comes from TORCH_INDEX_URL, CPU-only wheels for both architectures).

# -- build: the project's wheel. Pure Python, so it is built once on the build machine's own
#    platform (no emulation) and installed on every target platform.
FROM --platform=$BUILDPLATFORM python:3.11.13-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bus ./bus
COPY models ./models
COPY edge_agent ./edge_agent
COPY cloud_trainer ./cloud_trainer
COPY fleetlearn ./fleetlearn
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# -- runtime --------------------------------------------------------------------------------------
FROM python:3.11.13-slim-bookworm
ARG EXTRAS=edge
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# The user the agent runs as. Compose passes FLEETLEARN_UID: the secret files it mounts are the
# host user's, mode 600 (infra/scripts/init-secrets.sh).
ARG UID=1000
ARG GID=1000
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/fleetlearn/venv \
    PATH=/opt/fleetlearn/venv/bin:$PATH
RUN groupadd --gid "$GID" fleetlearn \
    && useradd --uid "$UID" --gid "$GID" --home-dir /var/lib/fleetlearn --no-create-home \
        --shell /usr/sbin/nologin fleetlearn \
    && install -d -o fleetlearn -g fleetlearn -m 750 /var/lib/fleetlearn
COPY --from=build /wheels /tmp/wheels
RUN set -eu; \
    torch_index=""; \
    case ",$EXTRAS," in *,edge-train,*) torch_index=$TORCH_INDEX_URL ;; esac; \
    python -m venv "$VIRTUAL_ENV"; \
    pip install ${torch_index:+--extra-index-url "$torch_index"} \
        "$(echo /tmp/wheels/fleetlearn-*.whl)[$EXTRAS]"; \
    rm -rf /tmp/wheels; \
    fleetlearn --help >/dev/null
COPY --chmod=0755 infra/docker/entrypoint.sh /usr/local/bin/entrypoint.sh
USER fleetlearn
WORKDIR /var/lib/fleetlearn
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
CMD ["fleetlearn", "edge", "run", "--config", "/etc/fleetlearn/device.yaml"]
