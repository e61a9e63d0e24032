#!/usr/bin/env python3
"""Self and inclusive shares of a `perf record --call-graph dwarf` profile of palimpsest-bench.

perf 6.1 cannot resolve symbols in binaries linked by rust-lld (the default linker since Rust 1.90):
their executable segment's address differs from its file offset, so `perf report` shows bare
addresses. This reads `perf script`, maps each address to the ELF's virtual address, and names it
with addr2line (inlined frames included).

usage: perf_symbols.py PERF_DATA BINARY [--within FUNC_SUBSTR] [--thread COMM_SUBSTR] [--top N]
                       [--folded OUT]
  --within   keep only stacks through a function (cut above its outermost frame): its share table
  --folded   also write folded stacks (one `a;b;c count` line each), for flame graphs or grep
"""
import collections
import re
import subprocess
import sys

data, binary = sys.argv[1], sys.argv[2]
args = sys.argv[3:]
within = None
top = 45
thread = None
folded_out = None
while args:
    a = args.pop(0)
    if a == "--within":
        within = args.pop(0)
    elif a == "--top":
        top = int(args.pop(0))
    elif a == "--thread":
        thread = args.pop(0)
    elif a == "--folded":
        folded_out = args.pop(0)

out = subprocess.run(
    ["perf", "script", "-i", data, "-F", "comm,tid,ip,sym,dso"],
    capture_output=True, text=True, check=True,
).stdout

samples = []
cur = None
for line in out.splitlines():
    if not line.strip():
        if cur is not None:
            samples.append(cur)
        cur = None
        continue
    if not line.startswith("\t") and not line.startswith(" "):
        cur = {"comm": line.split()[0], "frames": []}
        continue
    m = re.match(r"\s*([0-9a-f]+)\s+(.*)\s+\((.*)\)\s*$", line)
    if not m or cur is None:
        continue
    ip, sym, dso = m.groups()
    cur["frames"].append((int(ip, 16), sym.strip(), dso))
if cur is not None:
    samples.append(cur)

def load_segments(path):
    segs = []
    for line in subprocess.run(["readelf", "-lW", path], capture_output=True, text=True).stdout.splitlines():
        parts = line.split()
        if parts and parts[0] == "LOAD":
            off, vaddr, filesz = int(parts[1], 16), int(parts[2], 16), int(parts[4], 16)
            segs.append((off, off + filesz, vaddr - off))
    return segs


SEGS = load_segments(binary)


def to_vaddr(ip):
    # perf reports file offsets for this binary; lld's segments have vaddr != offset.
    for lo, hi, delta in SEGS:
        if lo <= ip < hi:
            return ip + delta
    return ip


for s in samples:
    s["frames"] = [(to_vaddr(ip) if dso == binary else ip, sym, dso) for ip, sym, dso in s["frames"]]

addrs = sorted({ip for s in samples for ip, sym, dso in s["frames"] if dso == binary})
res = {}
if addrs:
    # Return addresses point just after the call; close enough for attribution.
    p = subprocess.run(
        ["addr2line", "-f", "-i", "-C", "-e", binary, "-a"] + [hex(a) for a in addrs],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    i = 0
    cur_addr = None
    while i < len(p):
        line = p[i]
        if line.startswith("0x"):
            cur_addr = int(line, 16)
            res[cur_addr] = []
            i += 1
            continue
        func = line
        loc = p[i + 1] if i + 1 < len(p) else ""
        res[cur_addr].append(func)
        i += 2


def clean(f):
    f = re.sub(r"<impl [^>]*>", "impl", f)
    f = re.sub(r"::h[0-9a-f]{16}$", "", f)
    return f


def expand(frames):
    """Leaf first list of names, inlined frames expanded (innermost first)."""
    names = []
    for ip, sym, dso in frames:
        if dso == binary:
            chain = res.get(ip) or ["0x%x" % ip]
            names.extend(clean(c) for c in chain)
        else:
            names.append(sym if sym and sym != "[unknown]" else dso.split("/")[-1])
    return names


total = 0
self_c = collections.Counter()
incl = collections.Counter()
folded = collections.Counter()
for s in samples:
    if thread and thread not in s["comm"]:
        continue
    names = expand(s["frames"])
    if within:
        idx = [i for i, n in enumerate(names) if within in n]
        if not idx:
            continue
        names = names[: idx[-1] + 1]
    total += 1
    self_c[names[0] if names else "?"] += 1
    for n in set(names):
        incl[n] += 1
    folded[";".join(reversed(names))] += 1

print(f"samples: {total} (of {len(samples)})")
print("--- self ---")
for n, c in self_c.most_common(top):
    print(f"{100*c/total:6.2f}%  {n[:160]}")
print("--- inclusive ---")
for n, c in incl.most_common(top):
    print(f"{100*c/total:6.2f}%  {n[:160]}")
if folded_out:
    with open(folded_out, "w") as f:
        for k, c in folded.items():
            f.write(f"{k} {c}\n")
