# linkmond in a container. Watching the host's links needs the host's network namespace:
#   docker run --network host -v /etc/linkmond/linkmond.toml:/etc/linkmond/linkmond.toml:ro linkmond
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY linkmond ./linkmond
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
RUN useradd --system --no-create-home --shell /usr/sbin/nologin linkmond \
    && mkdir -p /etc/linkmond /var/lib/linkmond /var/log/linkmond \
    && chown linkmond: /var/lib/linkmond /var/log/linkmond
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels linkmond && rm -rf /wheels
USER linkmond
ENV STATE_DIRECTORY=/var/lib/linkmond
ENTRYPOINT ["linkmond"]
# /etc/linkmond/linkmond.toml when mounted, else the built-in default (console events)
CMD ["run"]
