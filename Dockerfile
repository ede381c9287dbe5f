# syntax=docker/dockerfile:1
#
# kvx-proxy container image. The runtime stage holds only the standalone executable (Node embedded), so it is
# also the source for pipeline images without Node:
#
#   COPY --from=REGISTRY/kvx-proxy:0.1.0 /usr/local/bin/kvx-proxy /usr/local/bin/kvx-proxy
#
# Every build step is scripts/docker-build.sh, which CI runs as plain shell (no container daemon there).
# Probes: the admin port serves /healthz and /readyz; Kubernetes ignores HEALTHCHECK, and the image has no
# shell or HTTP client for one, so the chart's httpGet probes are the health checks.

ARG NODE_IMAGE=node:24-bookworm-slim
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${NODE_IMAGE} AS build
WORKDIR /src
# Dependencies first: this layer is reused until the lockfile changes.
COPY package.json package-lock.json ./
COPY scripts/docker-build.sh scripts/docker-build.sh
RUN ["bash", "scripts/docker-build.sh", "deps"]
COPY . .
RUN ["bash", "scripts/docker-build.sh", "build", "/out"]

# glibc and libstdc++ (what the Node binary links against), CA certificates, and the nonroot user 65532.
FROM ${RUNTIME_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="kvx-proxy" \
      org.opencontainers.image.description="Authenticating reverse proxy for MLflow behind Google IAP, Cloud Run IAM or any auth layer; kvx-launch for Vertex AI pipelines" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/ /
USER 65532:65532
# The process environment kvx ships with (package.json kvx.processEnv, which the npm bin gives itself; see
# src/cli/node-flags.ts). glibc reads it only as a process starts: freed memory stays in one arena for every
# thread to reuse, 4-6 MB less RSS after load and in every transfer.
ENV MALLOC_ARENA_MAX=1
# 5001: MLflow clients (listen.port); 9464: /healthz, /readyz, /metrics (admin.port).
EXPOSE 5001 9464
ENTRYPOINT ["/usr/local/bin/kvx-proxy"]
CMD ["serve"]
