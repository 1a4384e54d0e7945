# syntax=docker/dockerfile:1
# AI FinOps exporter image.
#   docker build -t aifinops-exporter:<version> .   (version: exporter/aifinops/version.py)
#   docker run --rm -p 9877:9877 -v "$PWD/config/example.yaml:/etc/aifinops/config.yaml:ro" \
#     --read-only --tmpfs /tmp aifinops-exporter:<version>

# --- builder: resolve and install the exporter and its wheels into a virtual environment ---
FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
WORKDIR /src
# Dependencies have manylinux wheels (numpy, pydantic-core, msgspec): no compiler is needed.
COPY pyproject.toml README.md* ./
COPY exporter ./exporter
RUN /opt/venv/bin/pip wheel --wheel-dir /wheels . \
 && /opt/venv/bin/pip install --no-index --find-links /wheels ai-finops-exporter \
 && /opt/venv/bin/python -m compileall -q /opt/venv/lib \
 && test -x /opt/venv/bin/aifinops-exporter \
 && /opt/venv/bin/python -c 'import aifinops'

# --- final: the interpreter from the same base image, plus the venv, nothing else ---
FROM python:3.11-slim

# Set by `make generate` from exporter/aifinops/version.py.
ARG VERSION=0.1.0
# The source commit, published as aifinops_build_info{revision}:
#   docker build --build-arg REVISION=$(git rev-parse HEAD) .
ARG REVISION=unknown
LABEL org.opencontainers.image.title="ai-finops-exporter" \
      org.opencontainers.image.description="Prometheus exporter for GPU and LLM token cost per tenant" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim"

# Bytecode is compiled at build time; nothing is written outside /tmp at run time, so the
# container runs with a read-only root filesystem (Kubernetes: readOnlyRootFilesystem).
ENV PATH=/opt/venv/bin:$PATH \
    AIFINOPS_REVISION=${REVISION} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp

COPY --from=builder /opt/venv /opt/venv

# Numeric non-root UID/GID (the "nonroot" id of distroless images): Kubernetes can verify
# runAsNonRoot against a number, not against a user name.
USER 65532:65532
EXPOSE 9877

# slim has no curl: probe /healthz with the interpreter. Follows AIFINOPS__SERVER__PORT.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('AIFINOPS__SERVER__PORT', '9877'), timeout=3)"]

ENTRYPOINT ["aifinops-exporter"]
CMD ["--config", "/etc/aifinops/config.yaml"]
