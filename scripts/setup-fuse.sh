#!/usr/bin/env bash
# Installs what the power-loss tests need: `fusermount3` (Debian's fuse3 package), which the
# `powerloss` FUSE file system mounts through. Idempotent and quick once done. It does not check
# /dev/fuse: the tests that need it fail loudly, naming what is missing, rather than skip.
set -euo pipefail
if command -v fusermount3 >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup-fuse: fusermount3 is missing and apt-get is not available; install fuse3 by hand" >&2
  exit 1
fi
sudo_cmd=()
if [ "$(id -u)" != 0 ]; then sudo_cmd=(sudo); fi
"${sudo_cmd[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq fuse3 >/dev/null
command -v fusermount3 >/dev/null
