# syntax=docker/dockerfile:1
# Build stage: a virtual environment with clusterpki and its dependencies (wheels only, no compiler).
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN python -m venv /opt/clusterpki \
    && /opt/clusterpki/bin/pip install --no-cache-dir --only-binary=:all: --no-binary=clusterpki . \
    && /opt/clusterpki/bin/python -m compileall -q /opt/clusterpki

# Final stage: the slim runtime, the virtual environment, a non-root numeric user.
FROM python:3.12-slim
COPY --from=build /opt/clusterpki /opt/clusterpki
ENV PATH=/opt/clusterpki/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["clusterpki", "run"]
CMD ["-A", "--liveness", "http://0.0.0.0:8080/healthz", "--metrics-port", "9090"]
