#!/usr/bin/env bash
# Reproduces issue 16's LazyFS runs with the `powerloss` file system (SPEC section 10): a
# `palimpsest import` of a big transcript (23,000 messages, about 13 MB) in `sync` mode, the unsynced
# data dropped mid-import with the power LEFT ON (`clear-cache`, LazyFS's command), the importer
# killed a moment later, then `palimpsest audit` and `stats` on the same directory. The database
# carries over between rounds, each round first completing one acknowledged import, as in the issue.
#
# This is not a power cut and not a test: it shows what clearing a cache under a live process
# does. `echo cut` instead (the power off at once, as on a real disk) is what the harnesses check.
#
#   scripts/powerloss-clear-cache-repro.sh [ROUNDS (10)] [cut|clear-cache (clear-cache)]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
rounds="${1:-10}"
command="${2:-clear-cache}"
scripts/setup-fuse.sh >/dev/null
cargo build --quiet --release -p palimpsest-cli -p powerloss
bin="$root/target/release"
work="$(mktemp -d /dev/shm/powerloss-repro-XXXXXX)"
mnt="$(mktemp -d)"
cleanup() {
  fusermount3 -u "$mnt" 2>/dev/null || true
  [[ -n "${fs_pid:-}" ]] && wait "$fs_pid" 2>/dev/null || true
  rm -rf "$work" "$mnt"
}
trap cleanup EXIT
mkdir -p "$work/backing"
python3 - "$work/transcript.jsonl" <<'EOF'
import json, sys
with open(sys.argv[1], "w") as out:
    n = 0
    while n < 23000:
        out.write(json.dumps({"role": "user", "content": f"turn {n} " + "please look at this " * 20}) + "\n")
        call = f"call-{n}"
        out.write(json.dumps({"role": "assistant", "content": "", "tool_calls": [{"id": call, "type": "function",
            "function": {"name": "grep", "arguments": json.dumps({"pattern": f"p{n}"})}}]}) + "\n")
        out.write(json.dumps({"role": "tool", "tool_call_id": call, "content": "match line\n" * 60}) + "\n")
        out.write(json.dumps({"role": "assistant", "content": f"done with {n}. " + "summary words " * 15}) + "\n")
        n += 4
EOF
echo "transcript: $(wc -l < "$work/transcript.jsonl") messages, $(du -h "$work/transcript.jsonl" | cut -f1)"
"$bin/powerloss" "$work/backing" "$mnt" 2>/dev/null &
fs_pid=$!
for _ in $(seq 50); do [[ -e "$mnt/.powerloss" ]] && break; sleep 0.1; done
db="$mnt/db"
damaged=0
for round in $(seq 1 "$rounds"); do
  "$bin/palimpsest" import --db "$db" --session "done-$round" "$work/transcript.jsonl" >/dev/null
  "$bin/palimpsest" import --db "$db" --session "cut-$round" "$work/transcript.jsonl" >/dev/null 2>&1 &
  importer=$!
  # An import takes about 0.3 s here (1.5 s and more on LazyFS): land the drop inside it, and the
  # kill up to half a second later.
  sleep "$(python3 -c "import random; print(round(random.uniform(0.02, 0.3), 3))")"
  echo "$command" > "$mnt/.powerloss"
  sleep "$(python3 -c "import random; print(round(random.uniform(0.0, 0.5), 3))")"
  kill -9 "$importer" 2>/dev/null || true
  wait "$importer" 2>/dev/null || true
  [[ "$command" == cut ]] && echo on > "$mnt/.powerloss"
  verdict="clean"
  if ! audit="$("$bin/palimpsest" audit --db "$db" 2>&1)"; then
    verdict="audit: $(echo "$audit" | grep -oE '(head_without_log|seq_gap|head_mismatch|missing_head|undecodable[a-z_]*|storage error[^)]*\)|Corrupt[^}]*)' | sort | uniq -c | tr '\n' ' ')"
    [[ "$verdict" == "audit: " ]] && verdict="audit: $(echo "$audit" | tail -n 2 | tr '\n' ' ' | cut -c1-200)"
  fi
  if ! stats="$("$bin/palimpsest" stats --db "$db" 2>&1)"; then
    verdict="$verdict; stats: $(echo "$stats" | tail -n 1 | cut -c1-160)"
  fi
  echo "round $round: $verdict"
  if [[ "$verdict" != clean ]]; then
    damaged=$((damaged + 1))
    db="$mnt/db-after-$round"
  fi
done
echo "$command: $damaged of $rounds rounds left a database that does not audit clean"
