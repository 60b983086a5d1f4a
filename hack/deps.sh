#!/usr/bin/env bash
# Installs what keepvip's tests, demo and benchmark need on Debian 12, only
# if it is missing. Safe to run again. Needs root for apt-get.
set -euo pipefail

# command -> Debian package
declare -A need=(
  [ip]=iproute2 [bridge]=iproute2 [unshare]=util-linux [sysctl]=procps
  [keepalived]=keepalived [tshark]=tshark [ping]=iputils-ping
  [qemu-system-x86_64]=qemu-system-x86 [busybox]=busybox-static [ipvsadm]=ipvsadm [xz]=xz-utils
  [etcd]=etcd-server [vtysh]=frr [bird]=bird2 [nft]=nftables
)
missing=()
for cmd in "${!need[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "deps: need root to install: ${missing[*]}" >&2
    exit 1
  fi
  pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
  echo "deps: installing $pkgs"
  export DEBIAN_FRONTEND=noninteractive
  # tshark asks whether non-root users may capture; answer no.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  if ! apt-get install -y --no-install-recommends $pkgs >/tmp/keepvip-apt.log 2>&1; then
    apt-get update >>/tmp/keepvip-apt.log 2>&1
    apt-get install -y --no-install-recommends $pkgs >>/tmp/keepvip-apt.log 2>&1 || {
      echo "deps: apt-get install $pkgs failed; see /tmp/keepvip-apt.log" >&2
      exit 1
    }
  fi
  # Debian starts keepalived, FRR and BIRD as services on install; the
  # tests run their own, in their own namespaces.
  for svc in keepalived frr bird; do
    if printf '%s\n' "${missing[@]}" | grep -qx -e "$svc" -e "${svc}2"; then
      systemctl disable --now "$svc" >/dev/null 2>&1 || true
    fi
  done
fi
command -v go >/dev/null || { echo "deps: Go is not installed (want 1.26)" >&2; exit 1; }
go mod download
