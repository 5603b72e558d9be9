#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""What `synbackup status` costs on a large nexus archive.

Writes a synthetic archive of SEGMENTS closed segments of about 16 MiB each
(records `[offset, received_us, ENTRY]`, a closed segment's `.json` with its
BLAKE3 from `b3sum`, in the archiver's format) under WORKDIR, an instance `c0`
for it, and times, each ROUNDS times:

- `status c0` without the record of checked segments (what every call cost
  before it: each closed segment read and hashed), cold and warm;
- `status c0` with it (only segments changed since read), cold and warm;
- `verify --instance c0` (every byte, every time), cold and warm.

"cold": the page cache dropped first (root). A benchmark: it asserts nothing.

    sudo python3 bench/nexus_status.py --segments 64 --workdir /var/tmp/nexus-bench
"""

import argparse
import json
import os
import shutil
import subprocess
import time

MIB = 1 << 20


def record(offset, blob):
    """`[offset, received_us, ["edit", offset, blob]]` in msgpack."""
    out = bytearray(b"\x93\xcf")
    out += offset.to_bytes(8, "big")
    out += b"\xcf" + (1_700_000_000_000_000 + offset).to_bytes(8, "big")
    out += b"\x93\xa4edit\xcf" + offset.to_bytes(8, "big")
    out += b"\xc6" + len(blob).to_bytes(4, "big") + blob
    return bytes(out)


def make_archive(root, segments):
    arch = os.path.join(root, "backups", "nexus-archive")
    os.makedirs(arch)
    with open(os.path.join(arch, "archive.json"), "w") as f:
        json.dump({"format": 1, "cell": "cafe"}, f)
    blob = os.urandom(1000)
    off = 0
    for _ in range(segments):
        first, recs, size = off, [], 0
        while size < 16 * MIB:
            r = record(off, blob)
            recs.append(r)
            size += len(r)
            off += 1
        stem = f"{first:016x}-{off - 1:016x}"
        seg = os.path.join(arch, stem + ".seg")
        with open(seg, "wb") as f:
            f.write(b"".join(recs))
        digest = subprocess.run(["b3sum", "--no-names", seg], check=True,
                                capture_output=True, text=True).stdout.strip()
        with open(os.path.join(arch, stem + ".json"), "w") as f:
            json.dump({"first": first, "last": off - 1, "count": off - first,
                       "first_received_us": 1_700_000_000_000_000 + first,
                       "last_received_us": 1_700_000_000_000_000 + off - 1,
                       "blake3": digest}, f)
    os.makedirs(os.path.join(root, "etc"))
    os.makedirs(os.path.join(root, "svc"))
    with open(os.path.join(root, "etc", "c0.conf"), "w") as f:
        f.write(f"SYNBACKUP_SERVICE_DIR={root}/svc\nSYNBACKUP_BACKUP_ROOT={root}/backups\n")
    subprocess.run(["sync"], check=True)
    return arch, off


def timed(binary, root, args, cold):
    if cold:
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    cmd = [binary] + [a for d in ("config", "state", "lock", "metrics")
                      for a in (f"--{d}-dir", os.path.join(root, d if d != "config" else "etc"))]
    start = time.monotonic()
    subprocess.run(cmd + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--segments", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workdir", default="/var/tmp/nexus-bench")
    ap.add_argument("--synbackup", default="target/release/synbackup")
    a = ap.parse_args()
    shutil.rmtree(a.workdir, ignore_errors=True)
    arch, entries = make_archive(a.workdir, a.segments)
    print(f"{a.segments} segments, {entries} entries, "
          f"{sum(os.path.getsize(os.path.join(arch, n)) for n in os.listdir(arch)) / MIB:.0f} MiB")
    record_file = os.path.join(arch, ".checked.json")
    rows = {}
    for _ in range(a.rounds):
        for cold in (True, False):
            kind = "cold" if cold else "warm"
            if os.path.exists(record_file):
                os.remove(record_file)
            timed(a.synbackup, a.workdir, ["status", "c0"], False)  # warm the cache
            os.remove(record_file)
            rows.setdefault(f"status, no record, {kind}", []).append(
                timed(a.synbackup, a.workdir, ["status", "c0"], cold))
            rows.setdefault(f"status, with record, {kind}", []).append(
                timed(a.synbackup, a.workdir, ["status", "c0"], cold))
            rows.setdefault(f"verify --instance, {kind}", []).append(
                timed(a.synbackup, a.workdir, ["verify", "--instance", "c0"], cold))
    for name, ts in rows.items():
        print(f"{name:28} {min(ts):6.2f}-{max(ts):6.2f} s")
    shutil.rmtree(a.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
