# Sourced by every build and install script (tests/run, tests/install-tools,
# tests/control-plane/build, tests/tools/build, images/build), each of
# which sets ROTOR_SCRIPT to its own name first: one way to name steps and
# to fail loudly.
#
#   step "what this part does"    names the step that any failure reports
#   log "message"                 a progress line on stderr, "[script] ..."
#   die "message"                 the step, the message; exit 1
#
# Every failing command, wherever it is (a function, a pipeline under
# pipefail, the command substitution of an assignment), prints the script,
# the step, the command, its exit code and the line, then the script exits
# with that code. Never hide a command's status: no `echo "$(cmd)"`, no
# `local x="$(cmd)"`; assign on a line of its own.

set -Eeuo pipefail

ROTOR_SCRIPT="${ROTOR_SCRIPT:-$0}"
ROTOR_STEP="start"

log() { printf '[%s] %s\n' "$ROTOR_SCRIPT" "$*" >&2; }
step() {
  ROTOR_STEP="$*"
  log "step: $ROTOR_STEP"
}
die() {
  log "FAILED at step '$ROTOR_STEP': $*"
  exit 1
}

rotor_script_failed() {
  local code=$1 command=$2 line=$3
  log "FAILED at step '$ROTOR_STEP': \`$command\` exited with $code (line $line)"
}
trap 'rotor_script_failed $? "$BASH_COMMAND" "$LINENO"' ERR

# The cache outside the clone that every script shares, keyed inside by
# version: ROTOR_CACHE_DIR, else XDG_CACHE_HOME/rotor, else ~/.cache/rotor.
ROTOR_CACHE="${ROTOR_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rotor}"

# Go builds from module proxies: the module and build caches live in the
# cache (content-addressed, so a rebuild into an empty output directory is
# mostly linking); the toolchain is the machine's.
go_env() {
  export GOMODCACHE="${GOMODCACHE:-$ROTOR_CACHE/go/mod}"
  export GOCACHE="${GOCACHE:-$ROTOR_CACHE/go/build}"
  export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
  mkdir -p "$GOMODCACHE" "$GOCACHE"
}

# go_module DIR NAME: a fresh, empty throwaway wrapper module in DIR (the
# module paths are resolved again each time something is built, so a
# broken one fails at once).
go_module() {
  local dir=$1 name=$2
  rm -rf "$dir"
  mkdir -p "$dir"
  cd "$dir"
  go mod init "local/rotor-$name" 2>/dev/null
}

# go_get MODULE@VERSION...: resolves modules; go's output (a line per module
# added) is shown only when it fails, naming the proxy.
go_get() {
  local out
  out="$(mktemp)"
  if ! go get "$@" >"$out" 2>&1; then
    cat "$out" >&2
    rm -f "$out"
    die "\`go get $*\` failed: the Go module proxy did not serve this module or version (see go's message above)"
  fi
  rm -f "$out"
}
