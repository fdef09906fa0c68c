# gwproxy — multi-stage: dependencies are built in the first stage, the final image has no
# compilers, runs as a non-root user, and is configured by environment variables (config.toml
# documents every key; see docker-compose.yml for a full stack).
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gwproxy ./gwproxy
RUN pip install .

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
RUN useradd --system --uid 10001 --create-home --home-dir /app gwproxy
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --chown=gwproxy:gwproxy migrations ./migrations
COPY --chown=gwproxy:gwproxy config.toml ./config.toml
COPY --chown=gwproxy:gwproxy profiles ./profiles
# The capture spool (requests not yet in the database) and the switcher's state: volumes in
# docker-compose.yml, so neither dies with the container.
RUN install -d -o gwproxy -g gwproxy /app/spool /app/state
ENV GWPROXY_CAPTURE_SPOOL_DIR=/app/spool GWPROXY_SWITCH_STATE_DIR=/app/state
USER gwproxy
EXPOSE 8080
# `gwproxy healthcheck` asks /health on the port the configuration says (GWPROXY_SERVER_PORT,
# config.toml), so moving the port does not break the check.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 CMD ["gwproxy", "healthcheck"]
ENTRYPOINT ["gwproxy"]
CMD ["serve"]
