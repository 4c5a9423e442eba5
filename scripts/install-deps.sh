#!/usr/bin/env bash
# Installs the Debian packages that building and testing the module need and that a fresh
# Debian 12 machine lacks. As root it runs apt-get; otherwise it prints the exact command.
#
#   install-deps.sh                 build and test dependencies (make deps)
#   install-deps.sh --debian-nginx  also Debian's nginx and nginx-dev (make deb-deps), for
#                                   `make debian`/`make deb` and the package test; no nginx
#                                   service is started (policy-rc.d answers 101)
set -euo pipefail

packages=(make gcc libclang-dev libpcre2-dev libssl-dev zlib1g-dev pkg-config ssl-cert openssl curl redis-server wrk)
debian_nginx=no
case "${1:-}" in
    "") ;;
    --debian-nginx) debian_nginx=yes; packages+=(nginx nginx-dev dpkg-dev) ;;
    *) echo "usage: $0 [--debian-nginx]" >&2; exit 2 ;;
esac

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing Debian packages; run as root:" >&2
    echo "  apt-get update && apt-get install -y ${missing[*]}" >&2
    exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
policy=/usr/sbin/policy-rc.d
if [ "$debian_nginx" = yes ] && [ ! -e "$policy" ]; then
    # invoke-rc.d asks this script first: 101 = "action forbidden", so installing nginx
    # neither starts nor enables a service (a test machine has no use for one on port 80).
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
