#!/usr/bin/env bash
# Makes sure Debian's chromium and chromium-driver (chromedriver) are installed: the
# dashboard's browser test drives a real headless Chromium through WebDriver.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "browser: chromium and chromedriver are missing and this is not a Debian-like system; install them yourself" >&2
  exit 1
fi
sudo=""
[[ $(id -u) -eq 0 ]] || sudo="sudo"
echo "browser: installing chromium and chromium-driver from Debian packages" >&2
$sudo apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
