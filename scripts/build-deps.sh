#!/usr/bin/env bash
# Build tools beyond the Rust toolchain: nasm, so libjpeg-turbo (built from source by the
# mozjpeg crate for DCT-scaled JPEG decoding) gets its SIMD code. Without nasm the build
# still works, with a slower decoder, so a failed install only warns.
set -euo pipefail
if command -v nasm >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "build-deps: nasm is missing (install it for SIMD JPEG decoding); building without it" >&2
  exit 0
fi
sudo=""
[[ $(id -u) -eq 0 ]] || sudo="sudo"
echo "build-deps: installing nasm from Debian packages" >&2
if ! { $sudo apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nasm >/dev/null; }; then
  echo "build-deps: could not install nasm; JPEG decoding is built without SIMD" >&2
fi
