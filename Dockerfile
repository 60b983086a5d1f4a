# A static keepvip image: docker build -t keepvip:dev .
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/keepvip ./cmd/keepvip

# Nothing but the binary: keepvip talks to the kernel over netlink and
# needs no shell, ipvsadm or iptables.
FROM scratch
COPY --from=build /out/keepvip /usr/local/bin/keepvip
ENV PATH=/usr/local/bin
ENTRYPOINT ["keepvip"]
CMD ["run", "--help"]
