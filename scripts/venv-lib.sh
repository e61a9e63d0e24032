# Sourced by the set-up scripts that install into the project's test venv (setup-model-venv.sh,
# setup-nats.sh): needs `venv`, `python` and `log` set by the caller. Creates the venv when missing
# and defines `pip_install`, which installs into it quietly (progress to stderr only).

if [[ ! -x "$venv/bin/python" ]]; then
    log "creating $venv"
    if ! "$python" -m venv "$venv" >&2; then
        # Debian-style Pythons without the ensurepip module cannot seed pip into a venv; make a
        # bare one and install into it with the interpreter's own pip (pip >= 22.3 has --python).
        log "venv without ensurepip failed; retrying with --without-pip and $python's pip"
        rm -rf "$venv"
        "$python" -m venv --without-pip "$venv"
    fi
fi

pip_install() {
    if "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
        "$venv/bin/python" -m pip install --disable-pip-version-check --quiet "$@" >&2
    else
        "$python" -m pip --python "$venv/bin/python" install --disable-pip-version-check --quiet "$@" >&2
    fi
}
