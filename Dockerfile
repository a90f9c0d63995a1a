# CNF agent image: one container per OpenStack controller (see docs/deployment.md).
#
# Why Debian bookworm and its python3 (3.11) rather than a python:* image: the Ceph and libvirt Python
# bindings (python3-rbd, python3-rados, python3-libvirt) are built for Debian's interpreter; the venv is created
# with --system-site-packages so the agent sees them. vtysh (package frr) and the rbd CLI (ceph-common) are
# clients only: FRR and libvirt keep running on the host, reached through the bind-mounted /var/run/frr and
# /var/run/libvirt sockets; /etc/ceph and /etc/cnf come from the host too.

ARG DEBIAN_IMAGE=debian:bookworm-slim

FROM ${DEBIAN_IMAGE} AS build
# Debian package versions are not pinned: bookworm point releases replace them (security fixes); the base image
# tag is what pins the distribution.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY cnf ./cnf
RUN python3 -m venv --system-site-packages /opt/cnf \
 && /opt/cnf/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/cnf/bin/pip install --no-cache-dir .

FROM ${DEBIAN_IMAGE}
LABEL org.opencontainers.image.title="openstack-cnf" \
      org.opencontainers.image.description="Cluster Nova Federation agent" \
      org.opencontainers.image.licenses="Apache-2.0"
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 ca-certificates ceph-common python3-rbd python3-rados \
        python3-libvirt frr \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/cnf /opt/cnf
ENV PATH=/opt/cnf/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# REST API (every agent) and gRPC CNFPeer/CNFControl
EXPOSE 8080 50051
# root: the agent talks to the host's libvirt and FRR sockets, which are root/group owned on the host
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/metrics', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["cnf-agent"]
CMD ["--config", "/etc/cnf/cnf.yaml"]
