# deskmail: one image for every process (`deskmail run fetcher|router|ticketer|sender|api`,
# `deskmail topics create`, `deskmail db migrate`).
#
#   docker build -t deskmail:0.1.0 .
#   docker run --rm -v $PWD/deskmail.yaml:/etc/deskmail/deskmail.yaml:ro \
#     deskmail:0.1.0 run router --config /etc/deskmail/deskmail.yaml
FROM python:3.11-slim

# DESKMAIL_SCHEMAS: the Avro schemas are not inside the Python package; the codec
# finds them there. HOME=/tmp: the only writable place when the root filesystem
# is read-only (Kubernetes mounts an emptyDir on /tmp).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DESKMAIL_SCHEMAS=/opt/deskmail/schemas \
    HOME=/tmp

RUN groupadd --system --gid 10001 deskmail \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
            --shell /usr/sbin/nologin deskmail

# Every dependency ships wheels for linux/amd64 and linux/arm64, so no compiler is needed.
WORKDIR /opt/deskmail/src
COPY pyproject.toml ./
COPY services ./services
RUN pip install . \
 && rm -rf /opt/deskmail/src

COPY schemas /opt/deskmail/schemas

WORKDIR /opt/deskmail
# Numeric, so Kubernetes can check runAsNonRoot without looking the name up.
USER 10001:10001

# Metrics/health ports (fetcher, router, ticketer, sender), the web page and API, the SMTP/LMTP ingress.
EXPOSE 9101 9102 9103 9104 8080 2525

ENTRYPOINT ["deskmail"]
CMD ["--help"]
