#!/usr/bin/env bash
# A tour of the embedded local store, in a scratch directory:
# key generation, put, get, stage labels, KEK rotation and tamper detection.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet -p rotor
rotor="${CARGO_TARGET_DIR:-$PWD/target}/debug/rotor"
work=$(mktemp -d "${TMPDIR:-/tmp}/rotor-tour.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
export ROTOR_STORE=store.rotor ROTOR_KEY=kek.key
run() { printf '\n$ %s\n' "$*"; "$@"; }

run "$rotor" keygen --out kek.key
printf 'correct-horse-battery-staple' > pw.txt
run "$rotor" store put db --from-file pw.txt
printf 'rotated-value' | run "$rotor" store put db --pending
run "$rotor" store history db
run "$rotor" store promote db --version 2
run "$rotor" store get db
printf '\n$ rotor store get db --reveal\n'; "$rotor" store get db --reveal; echo
printf '\n$ grep -c correct-horse store.rotor   # the store holds no plaintext\n'
grep -c correct-horse store.rotor || true
run "$rotor" keygen --out kek2.key
run "$rotor" store rewrap --new-key kek2.key
printf '\n$ rotor store get db   # with the old key\n'
"$rotor" store get db || true
printf '\n$ (flip one byte of the store) && rotor store get db --key kek2.key\n'
printf '\x00' | dd of=store.rotor bs=1 seek=40 conv=notrunc status=none
"$rotor" store get db --key kek2.key || true
