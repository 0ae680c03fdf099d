# ad-event-processor container image.
#
#   docker build -t ad-event-processor .
#   docker run --rm -p 8080:8080 -p 9464:9464 ad-event-processor
#
# Two stages: "build" makes a virtualenv in /opt/venv (dependencies first, so
# editing the source does not reinstall them) and compiles the native codec
# (aep.events.codec._native) into it, "runtime" copies only that venv onto a
# fresh base: no pip, compiler or build backend in the final image.
# Works with the legacy builder too (no RUN --mount).
#
# Build arguments:
#   BASE_IMAGE  any Debian-like image with python3 >= 3.11 and the venv module
#               (default: the official slim Python image).
#   WHEELHOUSE  a folder of the build context holding wheels for an offline
#               build; pip looks there first. The default folder is empty.
#   PIP_NO_INDEX  set to 1 (with a full WHEELHOUSE) to forbid any download.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG WHEELHOUSE=.ci/wheelhouse
ARG PIP_NO_INDEX
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_FIND_LINKS=/wheels \
    PATH=/opt/venv/bin:$PATH
WORKDIR /src
RUN python3 -m venv /opt/venv
# A C compiler and the Python headers for the native codec, where the base
# lacks them (the slim image has the headers; a plain Debian has neither).
RUN include=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])') \
 && packages="" \
 && { command -v gcc >/dev/null || packages="gcc libc6-dev"; } \
 && { [ -f "$include/Python.h" ] || packages="$packages python3-dev"; } \
 && if [ -n "$packages" ]; then \
      apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $packages >/dev/null \
      && rm -rf /var/lib/apt/lists/*; \
    fi
COPY ${WHEELHOUSE}/ /wheels/
# Dependencies only, read from pyproject.toml: this layer is rebuilt when the
# dependencies change, not when the source does.
COPY pyproject.toml ./
RUN python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > /tmp/requirements.txt \
 && pip install --requirement /tmp/requirements.txt
COPY README.md LICENSE ./
COPY proto/ proto/
COPY service/ service/
# The project itself, native codec included (the check fails the build when it
# was not compiled); then pip leaves the venv, which the runtime does not need.
COPY setup.py MANIFEST.in ./
RUN pip install --no-deps . \
 && cd / && python3 -c 'import aep.events.codec._native' \
 && pip uninstall --yes pip

FROM ${BASE_IMAGE} AS runtime
LABEL org.opencontainers.image.title="ad-event-processor" \
      org.opencontainers.image.description="Ad event ingestion over gRPC: validated, batched, stored (JSON Lines, Redis, MongoDB)" \
      org.opencontainers.image.licenses="MIT"
# A numeric user, so Kubernetes can check runAsNonRoot without reading /etc/passwd.
ARG APP_UID=10001
COPY --from=build /opt/venv /opt/venv
# /app/data holds the file store's events/ and dead-letter/ (the relative
# defaults data/events and data/dead-letter resolve there); mount a volume on it.
# The official Python images ship pip, setuptools and wheel in the system
# Python, which the runtime does not need (a distribution's own pip, which
# refuses to uninstall itself under PEP 668, stays).
RUN mkdir -p /app/data \
 && chown -R ${APP_UID}:${APP_UID} /app/data \
 && (python3 -m pip uninstall --yes --quiet pip setuptools wheel 2>/dev/null || true)
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /app
USER ${APP_UID}:${APP_UID}
# 8080 gRPC (AdEventService, grpc.health.v1, reflection); 9464 HTTP /metrics and /health.
EXPOSE 8080 9464
# Exec form: the server is PID 1 and gets SIGTERM from `docker stop` and the
# kubelet directly, which starts its graceful drain (shutdown.grace_period).
ENTRYPOINT ["ad-event-processor"]
