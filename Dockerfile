# The gateway image that manifests/ deploys. Non-root (UID 65532), read-only root filesystem friendly.
#   docker build -t registry.example.com/wakegate:0.1.0 . && docker push registry.example.com/wakegate:0.1.0
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY provisioner ./provisioner
RUN python -m venv /opt/wakegate && /opt/wakegate/bin/pip install --no-cache-dir .

FROM python:3.11-slim
COPY --from=build /opt/wakegate /opt/wakegate
ENV PATH=/opt/wakegate/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["wakegate"]
CMD ["serve", "--backend=kubernetes"]
