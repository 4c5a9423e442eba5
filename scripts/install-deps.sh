#!/usr/bin/env bash
# Installs the Debian packages that building and testing the module need and that a fresh
# Debian 12 machine lacks. As root it runs apt-get; otherwise it prints the exact command.
set -euo pipefail

packages=(make gcc libclang-dev libpcre2-dev libssl-dev zlib1g-dev pkg-config ssl-cert openssl curl redis-server wrk)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
    echo "install-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    echo "install-deps: missing Debian packages; run as root:" >&2
    echo "  apt-get update && apt-get install -y ${missing[*]}" >&2
    exit 1
fi
