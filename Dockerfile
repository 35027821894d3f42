# linkmond in a container. Watching the host's links needs the host's network namespace:
#   docker run --network host linkmond
# runs the shipped config/linkmond.toml: events on the console (docker logs) and appended to
# var/events.jsonl below the WORKDIR, /var/lib/linkmond/var/events.jsonl (a volume there
# keeps them). A config mounted at /etc/linkmond/linkmond.toml replaces the shipped one.
# tests/test_docker.py runs this file's ENTRYPOINT and CMD as its USER from its WORKDIR.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY linkmond ./linkmond
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
# a fixed numeric UID/GID: USER names it by number, so Kubernetes' runAsNonRoot can verify it
# and a mounted volume can be chowned to it ahead of time (-K: a system account above 999)
RUN groupadd --system --gid 10001 linkmond \
    && useradd --system --uid 10001 --gid 10001 -K SYS_UID_MAX=10001 --no-create-home \
       --home-dir /var/lib/linkmond --shell /usr/sbin/nologin linkmond \
    && mkdir -p /etc/linkmond /var/lib/linkmond /var/log/linkmond \
    && chown 10001:10001 /var/lib/linkmond /var/log/linkmond
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels linkmond && rm -rf /wheels
# the default path of `linkmond run -c`; root-owned and read-only to the daemon's user
COPY config/linkmond.toml /etc/linkmond/linkmond.toml
# the shipped config's relative paths (var/events.jsonl) resolve here, writable by the user
WORKDIR /var/lib/linkmond
USER 10001:10001
ENV STATE_DIRECTORY=/var/lib/linkmond
ENTRYPOINT ["linkmond"]
CMD ["run"]
