# spokeproxy: a static binary on an empty base, run as a non-root user.
#   docker build -t spokeproxy .
#   docker run -v /etc/spokeproxy:/etc/spokeproxy:ro -p 6432:6432 -p 3389:3389 spokeproxy
# In a container, set admin.listen (and the fronts' listen addresses) to
# 0.0.0.0:PORT: the defaults bind to loopback.
# SIGTERM drains for up to 30s (serve -drain-timeout): give docker stop more
# than its 10s default (docker run --stop-timeout 45); docker kill -s HUP
# reloads the config. See docs/operations.md.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=devel
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/spokeproxy ./cmd/spokeproxy \
 && echo 'spokeproxy:x:65532:65532:spokeproxy:/nonexistent:/sbin/nologin' > /out/passwd \
 && echo 'spokeproxy:x:65532:' > /out/group

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/passwd /etc/passwd
COPY --from=build /out/group /etc/group
COPY --from=build /out/spokeproxy /usr/local/bin/spokeproxy
USER 65532:65532
# PostgreSQL front, LDAP front, LDAPS front, admin API.
EXPOSE 6432 3389 3636 9187
ENTRYPOINT ["/usr/local/bin/spokeproxy"]
CMD ["serve", "-config", "/etc/spokeproxy/spokeproxy.yaml"]
