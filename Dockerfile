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
USER gwproxy
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=2)"]
ENTRYPOINT ["gwproxy"]
CMD ["serve"]
