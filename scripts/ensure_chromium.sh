#!/usr/bin/env bash
# Install Debian's headless chromium for the HTML-report browser tests when missing.
set -u
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || exit 1
  command -v chromium >/dev/null 2>&1 && exit 0
fi
exit 1
