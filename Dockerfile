# The gateway image that manifests/ deploys. Non-root (UID 65532), read-only root filesystem friendly.
#   docker build -t registry.example.com/wakegate:0.1.0 . && docker push registry.example.com/wakegate:0.1.0
# VERSION is the package's (gateway/__init__.py); tests/test_packaging.py keeps the two equal, runs the
# build stage's steps and checks that the venv they make serves the compiled data path.
ARG VERSION=0.1.0

FROM python:3.11-slim AS build
ARG VERSION
# gcc compiles the data path into the wheel (setup.py, gateway/native.py); only this stage has it, and
# mypy only pip's isolated build environment.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md LICENSE ./
COPY gateway ./gateway
COPY provisioner ./provisioner
# WAKEGATE_BUILD_NATIVE=require: a wheel without the compiled data path fails the build instead of
# falling back to plain Python. The wheel's name must carry VERSION. `check` runs on the installed
# package (-P: not on /src's sources) and fails on an extension that does not match its source.
RUN WAKEGATE_BUILD_NATIVE=require pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/wakegate \
 && /opt/wakegate/bin/pip install --no-cache-dir /wheels/wakegate-${VERSION}-*.whl \
 && /opt/wakegate/bin/python -P -m gateway.native check

FROM python:3.11-slim
ARG VERSION
LABEL org.opencontainers.image.title="wakegate" \
      org.opencontainers.image.description="Scale-to-zero HTTP gateway for per-project environments on Kubernetes" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/wakegate /opt/wakegate
ENV PATH=/opt/wakegate/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["wakegate"]
CMD ["serve", "--backend=kubernetes"]
