FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# The CUDA image has no Python: add Ubuntu's, in a venv because PEP 668 blocks pip
# installs into the system one.
RUN command -v python3 >/dev/null || ( \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install --yes \
            --no-install-recommends ca-certificates python3 python3-venv \
        && apt-get clean \
        && rm -rf /var/lib/apt/lists/* \
    ) \
    && python3 -m venv /opt/venv
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH

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
RUN pip install --no-cache-dir jupyterlab==4.2.5

COPY --chown=1000:1000 requirements.txt /usr/app/
RUN pip install --no-cache-dir -r requirements.txt

USER 1000:1000
ENV PYTHONUNBUFFERED=1
