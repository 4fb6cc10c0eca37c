FROM python:3.11-slim

# The caller's uid/gid, so files written to mounted folders keep their owner. Either id
# may already exist in the base; if the name is taken or refused, use a fallback name.
# --no-log-init: otherwise a huge uid makes useradd write a huge lastlog file.
RUN set -e; \
    getent group 1000 >/dev/null || groupadd --gid 1000 caliban-1000; \
    if ! getent passwd 1000 >/dev/null; then \
        opts="--no-log-init --no-create-home --uid 1000 --gid 1000 --home-dir /home/alice --shell /bin/bash"; \
        useradd $opts alice 2>/dev/null || useradd $opts caliban-1000; \
    fi; \
    mkdir -p /home/alice /usr/app; \
    chown 1000:1000 /home/alice /usr/app
ENV HOME=/home/alice
WORKDIR /usr/app

# Dependencies before any code: a code change rebuilds only what follows.
COPY --chown=1000:1000 requirements.txt /usr/app/
RUN pip install --no-cache-dir -r requirements.txt

COPY --chown=1000:1000 . /usr/app/

USER 1000:1000
ENV PYTHONUNBUFFERED=1
ENTRYPOINT ["python", "mycode.py"]
