# bidsport BIDS-App image.
#
#   docker build -t bidsport/bidsport:0.1.0 .
#   docker run --rm -u "$(id -u):$(id -g)" --read-only --tmpfs /tmp \
#       -v /path/to/inbox:/data:ro -v /path/to/bids:/out \
#       bidsport/bidsport:0.1.0 /data /out participant
#   docker run ... bidsport/bidsport:0.1.0 /data /out group
#
# Build arguments (all optional):
#   BASE_IMAGE         a Debian 12 (bookworm) image with apt; its python3 (3.11) runs bidsport
#   DCM2NIIX_VERSION   the dcm2niix wheel; must equal the pin in pyproject.toml (pip refuses
#                      a different one, and tests/test_descriptor.py checks it)
#   VERSION            bidsport version for the OCI labels (= bidsport.__version__, checked
#                      by tests/test_descriptor.py and ci/container.sh)
#   VCS_REF            git commit for the org.opencontainers.image.revision label
#   WHEELHOUSE         empty (default): dependencies come from PyPI. "/wheels": install
#                      offline, only from the wheels in build/wheels/ of the build context
#                      (ci/container.sh puts them there with `pip wheel`)
#   SOURCE_DATE_EPOCH  date of the generated man page (reproducible builds)
#
# Only the output dir, the work dir (-w; by default a temporary folder inside the output,
# or under /tmp with --anonymize) and /tmp are written, so the container runs with
# --read-only and a tmpfs on /tmp. See docs/containers.md.

ARG BASE_IMAGE=debian:bookworm-slim
ARG DCM2NIIX_VERSION=1.0.20260724
ARG VERSION=0.1.0
ARG WHEELHOUSE=""

# ---------------------------------------------------------------------------------------
# base: Debian's Python 3.11, shared by the build and the final stage (so the virtual
# environment built in one runs unchanged in the other).
FROM ${BASE_IMAGE} AS base
ENV LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*

# ---------------------------------------------------------------------------------------
# requirements: the dependencies listed in pyproject.toml (runtime + the validator extra).
# Only this list reaches the deps stage, so other edits of pyproject.toml keep the
# dependency layer cached.
FROM base AS requirements
WORKDIR /src
COPY pyproject.toml ./
RUN python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
print("\n".join(p["dependencies"] + p["optional-dependencies"]["validator"]))' > requirements.txt

# ---------------------------------------------------------------------------------------
# deps: a virtual environment in /opt/bidsport with the dependencies only; this layer
# (the big one) survives every change of bidsport itself.
FROM base AS deps
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/bidsport
ARG WHEELHOUSE
# The glob copies build/wheels/ when it exists and nothing otherwise.
COPY build/wheel[s] /wheels/
COPY --from=requirements /src/requirements.txt /tmp/requirements.txt
ARG DCM2NIIX_VERSION
RUN /opt/bidsport/bin/pip install --no-cache-dir --disable-pip-version-check \
        --root-user-action=ignore ${WHEELHOUSE:+--no-index --find-links "$WHEELHOUSE"} \
        -r /tmp/requirements.txt "dcm2niix==${DCM2NIIX_VERSION}"

# ---------------------------------------------------------------------------------------
# wheel: bidsport's wheel, built from source (it carries the man page, generated from the
# parser by argparse-manpage).
FROM deps AS wheel
WORKDIR /src
COPY pyproject.toml README.md LICENSE setup.py ./
COPY src ./src
ARG WHEELHOUSE
ARG SOURCE_DATE_EPOCH
RUN if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then unset SOURCE_DATE_EPOCH; fi \
    && /opt/bidsport/bin/pip wheel --no-cache-dir --disable-pip-version-check --no-deps \
        ${WHEELHOUSE:+--no-index --find-links "$WHEELHOUSE"} --wheel-dir /dist .

# ---------------------------------------------------------------------------------------
# final: the dependencies, then bidsport (a small layer), a non-root user, nothing else.
FROM base
ARG BASE_IMAGE
ARG DCM2NIIX_VERSION
ARG VERSION
ARG VCS_REF=""
LABEL org.opencontainers.image.title="bidsport" \
      org.opencontainers.image.description="BIDS-App: an inbox of raw scanner DICOM packets becomes a validated BIDS dataset" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.source="https://github.com/bidsport/bidsport" \
      org.opencontainers.image.url="https://github.com/bidsport/bidsport" \
      org.opencontainers.image.documentation="https://github.com/bidsport/bidsport/blob/main/docs/containers.md" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="The bidsport developers" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      io.github.bidsport.dcm2niix.version="${DCM2NIIX_VERSION}"
# uid/gid 1000: the first user of most single-user hosts; use `-u "$(id -u):$(id -g)"` to
# write as yourself. HOME is /tmp so that any uid has a writable home under --read-only.
RUN groupadd --gid 1000 bidsport \
    && useradd --no-log-init --uid 1000 --gid bidsport --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin bidsport
COPY --from=deps /opt/bidsport /opt/bidsport
COPY --from=wheel /dist /tmp/dist
RUN /opt/bidsport/bin/pip install --no-cache-dir --disable-pip-version-check \
        --root-user-action=ignore --no-deps --no-index /tmp/dist/bidsport-*.whl \
    && rm -rf /tmp/dist \
    && test -s /opt/bidsport/share/man/man1/bidsport.1
ENV PATH=/opt/bidsport/bin:$PATH \
    HOME=/tmp
USER 1000:1000
RUN bidsport --version && dcm2niix -h > /dev/null
ENTRYPOINT ["bidsport"]
CMD ["--help"]
