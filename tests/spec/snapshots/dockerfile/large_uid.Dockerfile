FROM python:3.11-slim

# The caller's uid/gid, so files written to mounted folders keep their owner. Either id
# may already exist in the base; if the name is taken or refused, use a fallback name.
# --no-log-init: otherwise a huge uid makes useradd write a huge lastlog file.
RUN set -e; \
    getent group 89939 >/dev/null || groupadd --gid 89939 caliban-89939; \
    if ! getent passwd 735994 >/dev/null; then \
        opts="--no-log-init --no-create-home --uid 735994 --gid 89939 --home-dir /home/totoro --shell /bin/bash"; \
        useradd $opts totoro 2>/dev/null || useradd $opts caliban-735994; \
    fi; \
    mkdir -p /home/totoro /usr/app; \
    chown 735994:89939 /home/totoro /usr/app
ENV HOME=/home/totoro
WORKDIR /usr/app

COPY --chown=735994:89939 scripts /usr/app/scripts

USER 735994:89939
ENV PYTHONUNBUFFERED=1
ENTRYPOINT ["/bin/bash", "scripts/run.sh"]
