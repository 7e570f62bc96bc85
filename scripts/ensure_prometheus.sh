#!/usr/bin/env bash
# The metrics tests scrape the server with a real Prometheus and check rules with
# promtool. Install Debian's prometheus package when they are missing.
set -euo pipefail
if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then SUDO=sudo; else
    echo "prometheus/promtool missing and not root: install Debian's 'prometheus' package" >&2
    exit 1
  fi
else
  SUDO=
fi
echo "== installing Debian's prometheus package (for the metrics tests)"
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y --no-install-recommends prometheus >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  $SUDO apt-get install -y --no-install-recommends prometheus >/dev/null
fi
# The package starts a system service where systemd runs; the tests start their own.
$SUDO systemctl stop prometheus >/dev/null 2>&1 || true
command -v prometheus && command -v promtool
