#!/usr/bin/env bash
# Build tools and system libraries beyond the Rust toolchain, from Debian packages:
# - nasm: assembly for libjpeg-turbo (built from source by the mozjpeg crate) and for rav1e (the
#   AVIF encoder, `ravif` with `asm`). The rav1e build needs it.
# - libdav1d-dev + pkg-config: libdav1d, the AV1 decoder behind AVIF input (the `dav1d` crate
#   links the system library; Debian 12 ships 1.0). The build needs it.
# - libavif-bin: `avifdec`, an independent AVIF decoder the image tests read variants back with
#   (optional: without it those checks are skipped with a note).
set -euo pipefail

missing=()
command -v nasm >/dev/null 2>&1 || missing+=(nasm)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
pkg-config --exists dav1d 2>/dev/null || missing+=(libdav1d-dev)
command -v avifdec >/dev/null 2>&1 || missing+=(libavif-bin)
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi

have_required() {
  command -v nasm >/dev/null 2>&1 && command -v pkg-config >/dev/null 2>&1 && pkg-config --exists dav1d 2>/dev/null
}

if ! command -v apt-get >/dev/null 2>&1; then
  echo "build-deps: missing ${missing[*]}; install them (nasm, pkg-config, libdav1d >= 1.0 < 1.3 with its headers, optionally libavif's avifdec)" >&2
  have_required || exit 1
  exit 0
fi
sudo=""
[[ $(id -u) -eq 0 ]] || sudo="sudo"
echo "build-deps: installing ${missing[*]} from Debian packages" >&2
if ! { $sudo apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
  echo "build-deps: could not install ${missing[*]}" >&2
fi
if ! have_required; then
  echo "build-deps: nasm, pkg-config and libdav1d-dev are needed to build fleet-images (AVIF decode and encode); install them and run again" >&2
  exit 1
fi
command -v avifdec >/dev/null 2>&1 || echo "build-deps: avifdec (libavif-bin) missing: the image tests skip their independent AVIF check" >&2
