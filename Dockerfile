# linkmond in a container. Watching the host's links needs the host's network namespace:
#   docker run --network host linkmond
# runs the shipped config/linkmond.toml: events on the console (docker logs) and appended to
# var/events.jsonl below the WORKDIR, /var/lib/linkmond/var/events.jsonl (a volume there
# keeps them). A config mounted at /etc/linkmond/linkmond.toml replaces the shipped one.
# tests/test_docker.py reads this file and runs its ENTRYPOINT and CMD as its USER from its
# WORKDIR; scripts/test runs `hadolint Dockerfile`.
#
# Both stages use the same base, pinned by tag to Python 3.11 on Debian 12 (bookworm): what
# the first installs is for the interpreter of the second. Not by digest: nothing here would
# bump one, and a frozen base would freeze out Debian's and Python's security fixes with it
# (`docker build --pull` takes the tag's current rebuild).
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY linkmond ./linkmond
# linkmond and its dependencies, byte-compiled, under /install as they go into /usr/local
# (bin/, lib/python3.11/site-packages/); the scripts' #! names this stage's Python in
# /usr/local/bin, which the final stage has too. Every dependency is pure Python or has a
# binary wheel (amd64, arm64): no compiler in either stage.
RUN pip install --no-cache-dir --no-warn-script-location --prefix=/install .

FROM python:3.11-slim-bookworm
# a fixed numeric UID/GID: USER names it by number, so Kubernetes' runAsNonRoot can verify it
# and a mounted volume can be chowned to it ahead of time (-K: a system account above 999)
RUN groupadd --system --gid 10001 linkmond \
    && useradd --system --uid 10001 --gid 10001 -K SYS_UID_MAX=10001 --no-create-home \
       --home-dir /var/lib/linkmond --shell /usr/sbin/nologin linkmond \
    && mkdir -p /etc/linkmond /var/lib/linkmond /var/log/linkmond \
    && chown 10001:10001 /var/lib/linkmond /var/log/linkmond
# only what the install left, in one layer: no wheels, no pip cache, no source tree, and no
# pip run in this stage
COPY --from=build /install /usr/local
# the default path of `linkmond run -c`; root-owned and read-only to the daemon's user
COPY config/linkmond.toml /etc/linkmond/linkmond.toml
# the shipped config's relative paths (var/events.jsonl) resolve here, writable by the user
WORKDIR /var/lib/linkmond
USER 10001:10001
# Neither PYTHONUNBUFFERED nor PYTHONDONTWRITEBYTECODE: the console sink and the logs flush
# every line themselves (docker logs has them at once), and the .pyc files are compiled at
# install, in the layer above (a faster start), where the user could not write them anyway.
ENV STATE_DIRECTORY=/var/lib/linkmond
# No HEALTHCHECK: nothing meaningful to probe. The daemon serves no port; a probe such as
# `linkmond status` would only find that the process exists, which Docker knows already
# (the daemon is PID 1: when it exits, the container stops and a restart policy acts), and
# would start a Python every interval. The liveness watchdog is systemd's (linkmond.service).
ENTRYPOINT ["linkmond"]
CMD ["run"]
