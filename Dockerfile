# chatserver in a container: the server on SQLite by default, or the
# multi-worker set-up over PostgreSQL and Redis with compose.yaml.
#
#   docker build -t chatserver .
#   docker run -d --name chat -p 7070:7070 -v chat-data:/var/lib/chatserver chatserver
#   docker exec -it chat chatserver-admin user add alice --admin
#   docker exec chat chatserver-admin fingerprint
#
# The wheels are built in a first stage, so the image has no compiler and
# no source tree; it runs as an unprivileged user, its data and logs in
# volumes.

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[scale,fast]'

FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="chatserver" \
      org.opencontainers.image.description="A small, secure, self-hosted chat server" \
      org.opencontainers.image.licenses="MIT"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CHATSERVER_CONFIG=/etc/chatserver/chatserver.ini
# pg_dump, for chatserver-admin backup of a PostgreSQL database.
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-client=15.* \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/chatserver \
        --shell /usr/sbin/nologin chatserver \
    && install -d -o chatserver -g chatserver -m 0700 /var/lib/chatserver \
    && install -d -o chatserver -g chatserver -m 0750 /var/log/chatserver
COPY --from=build /wheels /wheels
# The wheels of the first stage only: --no-index, nothing else is fetched.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --no-index --find-links=/wheels 'chatserver[scale,fast]' \
    && rm -rf /wheels \
    && chatserver-admin write-config /etc/chatserver \
    && python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
VOLUME ["/var/lib/chatserver", "/var/log/chatserver"]
USER 10001:10001
WORKDIR /var/lib/chatserver
EXPOSE 7070
# Healthy while a serving process answers on its control socket.
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD ["chatserver-admin", "status"]
# All interfaces of the container (the shipped file listens on loopback);
# warnings and worse to the container's log, everything in the log volume.
ENTRYPOINT ["twistd", "--nodaemon", "--pidfile=", "--logger=chatserver.logs.console", "chatserver"]
CMD ["--endpoint", "tcp:7070:backlog=4096"]
