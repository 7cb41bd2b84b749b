#!/usr/bin/env bash
# Builds the kvserver container image from a statically linked release binary.
#
#   scripts/image.sh [TAG]        (default tag: kv:local)
#
# The binary is linked statically against glibc (`-C target-feature=+crt-static`) so the image
# can start `FROM scratch`: no base image is pulled, which is what a machine without access to a
# registry needs. Build scripts and proc macros are still linked dynamically, because the flag
# applies only to the explicit --target. Prints the image's size at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-kv:local}"
target="$(rustc -vV | sed -n 's/^host: //p')"

RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked --target "$target" -p kvserver --bin kvserver

context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
target_dir="${CARGO_TARGET_DIR:-target}"
cp "$target_dir/$target/release/kvserver" "$context/kvserver"
strip "$context/kvserver" 2>/dev/null || true
cp Dockerfile "$context/Dockerfile"
docker build --quiet --tag "$tag" "$context" >/dev/null
size=$(docker image inspect --format '{{.Size}}' "$tag")
echo "built $tag: $((size / 1024 / 1024)) MiB ($size bytes)"
