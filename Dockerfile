# The gateway image that manifests/ deploys. Non-root (UID 65532), read-only root filesystem friendly.
#   docker build -t registry.example.com/wakegate:0.1.0 . && docker push registry.example.com/wakegate:0.1.0
FROM python:3.11-slim AS build
# gcc compiles the data path (gateway/native.py); only this stage has it.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY provisioner ./provisioner
RUN python -m venv /opt/wakegate && /opt/wakegate/bin/pip install --no-cache-dir '.[native]' \
 && /opt/wakegate/bin/python -m gateway.native build \
 && /opt/wakegate/bin/python -m gateway.native check \
 && /opt/wakegate/bin/pip uninstall -y -q mypy mypy_extensions librt pathspec ast-serialize

FROM python:3.11-slim
COPY --from=build /opt/wakegate /opt/wakegate
ENV PATH=/opt/wakegate/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["wakegate"]
CMD ["serve", "--backend=kubernetes"]
