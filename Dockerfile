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
RUN apk add --no-cache sqlite
WORKDIR /app
COPY --from=build /out/server /app/server
ENV DB_PATH=/app/.data/ticks.db \
    HTTP_PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD wget -q -O /dev/null "http://127.0.0.1:${HTTP_PORT}/healthz" || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["/app/server"]
