# The agent's image (herdgate/agent:<version>): `docker build -t herdgate/agent:0.1.0 .`
#
# Without a registry (no base image to pull) scripts/build-agent-image makes the same
# image from Debian's packages with debootstrap; both run scripts/agent_image.py's
# `assemble`, so the two images hold the same files. See docs/design.md, section 10.
#
# Stages: `build` (Debian bookworm with a C compiler) compiles the wheel with mypyc
# (setup.py, config/native.py), downloads the dependencies' wheels and assembles a root
# filesystem of Python's run-time packages only; the image is that root filesystem on
# `scratch`, in three layers from the least to the most often changed: Debian's Python,
# the dependencies, herdgate. No shell, no package manager; a numeric non-root user.

# Debian 12 of 2025-12-29, pinned by its amd64 manifest's digest (as published with
# docker.io/library/debian:bookworm-20251229), and apt pinned to Debian's snapshot of
# that day, so that a rebuild installs the same package versions.
ARG DEBIAN=docker.io/library/debian:bookworm-20251229@sha256:4216e8fe27fdd803d2822d08ed9de39825a41a47e34c32b71a23ac074f91eaf4
ARG SNAPSHOT=20251229T000000Z

FROM ${DEBIAN} AS build
ARG SNAPSHOT
# (--build-arg SNAPSHOT= : Debian's mirror as the base image names it.)
RUN if [ -n "${SNAPSHOT}" ]; then sed -i \
      -e "s|http://deb.debian.org/debian-security|http://snapshot.debian.org/archive/debian-security/${SNAPSHOT}|" \
      -e "s|http://deb.debian.org/debian|http://snapshot.debian.org/archive/debian/${SNAPSHOT}|" \
      /etc/apt/sources.list.d/debian.sources; fi \
 && apt-get -o Acquire::Check-Valid-Until=false update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      python3 python3-venv python3-dev gcc libc6-dev ca-certificates netbase \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/build && /opt/build/bin/pip install -q --upgrade pip
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY herdgate herdgate
COPY config config
COPY tunnel tunnel
COPY gateway gateway
COPY webhook webhook
COPY ace ace
COPY scripts/agent_image.py scripts/agent_image.py
# The wheel compiled with mypyc (pip builds it in isolation with build-system.requires:
# mypy and the typed dependencies) and the dependencies' wheels.
RUN /opt/build/bin/pip wheel -q --wheel-dir /wheels . \
 && ls /wheels/herdgate-*-cp311-cp311-linux_x86_64.whl
# Layer 1: Python's run-time packages copied out of this stage (dpkg's file lists), the
# users, the mount points, /usr/local/bin/herdgate.
RUN python3 scripts/agent_image.py assemble / /rootfs
# Layers 2 and 3: the dependencies, then herdgate, each in its own tree; byte-code
# compiled now, as the image's root is read-only at run time.
ARG SITE=/usr/local/lib/python3.11/dist-packages
RUN /opt/build/bin/pip install -q --no-index --find-links /wheels --no-compile \
      --target /deps$SITE $(ls /wheels/*.whl | grep -v /herdgate-) \
 && /opt/build/bin/pip install -q --no-index --no-deps --no-compile \
      --target /app$SITE /wheels/herdgate-*.whl \
 && rm -rf /deps$SITE/bin /app$SITE/bin \
 && python3 -m compileall -q -j0 --invalidation-mode unchecked-hash -s /deps -p / /deps$SITE \
 && python3 -m compileall -q -j0 --invalidation-mode unchecked-hash -s /app -p / /app$SITE

FROM scratch
ARG VERSION=0.1.0
ARG REVISION=unknown
COPY --from=build /rootfs/ /
COPY --from=build --chown=10001:10001 /rootfs/home/herdgate/ /home/herdgate/
COPY --from=build /deps/ /
COPY --from=build /app/ /
USER 10001:10001
ENV PATH=/usr/local/bin:/usr/bin \
    HOME=/home/herdgate \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
LABEL org.opencontainers.image.title="herdgate-agent" \
      org.opencontainers.image.description="herdgate's cluster agent: holds the reverse tunnel from a Kubernetes cluster to the herdgate gateway" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-20251229"
STOPSIGNAL SIGTERM
ENTRYPOINT ["herdgate", "agent"]
