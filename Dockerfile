# Build stage: a static, pure-Go binary.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/server ./cmd/server

# Runtime stage: alpine for its busybox wget (the health check) and the
# sqlite3 shell (make symbol-add and friends on hosts without sqlite3).
FROM alpine:3
RUN apk add --no-cache sqlite \
 && mkdir -p /app/.data \
 && chmod 1777 /app/.data
WORKDIR /app
COPY --from=build /out/server /app/server
ENV DB_PATH=/app/.data/ticks.db \
    HTTP_PORT=8080
# Not root. docker-compose.yml runs it as the user who calls `make run`, so
# that the files in the ./.data bind mount belong to that user.
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD wget -q -O /dev/null "http://127.0.0.1:${HTTP_PORT}/healthz" || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["/app/server"]
