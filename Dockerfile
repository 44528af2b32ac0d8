# klagg's image: a static binary on a distroless base, run as a non-root user.
#   docker build -t klagg .
#   docker run --rm klagg demo
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# Static (no cgo), so the runtime image needs no libc.
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/klagg ./cmd/klagg

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/klagg /usr/local/bin/klagg
USER 65532:65532
# /metrics, /healthz and /readyz
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/klagg"]
CMD ["demo"]
