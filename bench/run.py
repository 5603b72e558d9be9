# SPDX-License-Identifier: Apache-2.0
"""Benchmark: synbackup against Synapse's own backup tool, mdb_copy and the disk.

Run with the Synapse venv's python (it has py-lmdb), as root (to drop caches):

  VENV/bin/python bench/run.py [--size-gib 2.5] [--rounds 3] [--small] ...

It generates a Synapse-shaped service directory under --workdir (kept between runs
and regenerated only when the shape changes), then measures, alternating within each
round, every command with the page cache warm and with it dropped before the command:

  synbackup        synbackup backup SRC DST --json             (default --jobs)
  synbackup-j1     synbackup backup SRC DST --json --jobs 1
  python-tool      python -m synapse.tools.service.backup SRC DST; sync
  mdb_copy         mdb_copy -c of each environment one after another; sync
  dd               dd if=/dev/zero bs=1M count=<synbackup's bytes> conv=fdatasync
  dd-direct        the same with oflag=direct: the write limit (the device alone)
  read-direct      O_DIRECT read of the live pages in file order: the read limit (cold)
  python-import    python -c 'import synapse.tools.service.backup' (not by default)

--mirror instead measures the leader's write latency (one edit per call, p50/p99/max)
while `synbackup run` backs up its mirror (SYNBACKUP_SOURCE=mirror) again and again,
against a baseline and against `synbackup backup` of the leader itself, and samples
the leader's `paused` every 20 ms (2.256.0 only).

--seed-mirror instead makes a new mirror of a leader whose nightly backup is older
than its last --seed-mirror-after writes, two ways, alternated --rounds times: `synbackup seed-mirror`
from that backup, and Synapse's own clone (`_initCloneCell`: the leader runs a new
backup and streams it as a tar.gz); each until the started mirror has the leader's
index: time to ready, bytes the leader sends (a relay in front of its socket),
whether it ran a backup (getBackupInfo), its disk writes (2.256.0 only).

and, when the Synapse 3.7.0 tree of tests/synapse3 is there (--syn3-root), Synapse
3.7.0's own tool as peers on the same data: a real 3.7.0 Cortex runs on CELL3 (in the
workdir) for the whole run, and each shape's directory is hard-linked into it as
CELL3/shape, so that the cell's own backup stream covers it too:

  synbackup-3      synbackup backup CELL3 DST --json (the cell frozen and resumed)
  python-tool-3    3.7.0's python -m synapse.tools.service.backup CELL3 DST; sync
  stream-3         3.7.0's python -m synapse.tools.service.backup tcp://...CELL3 DST.zip;
                   sync: the cell streams a zip of its live backup over telepath
                   (initBackupStream); its CPU time includes the cell's (the cell's
                   backup process does the reading and compressing). Over tcp://
                   (root's password set in cell.yaml), because over the unix socket
                   (cell://) 3.7.0's backup process writes to the caller's
                   non-blocking socket and fails with BlockingIOError once its buffer
                   is full, the client then failing or waiting for ever
  python-import-3  3.7.0's python -c 'import synapse.tools.service.backup' (not by default)

on each data shape (--shapes: inline, blob, log, many, mixed), each its own rows.
--scale instead measures synbackup (and what --commands adds) on the mixed shape at
growing sizes.

--restore instead measures getting a backup back, on each shape (one synbackup
backup of it, made first, is the source of every row):

  synbackup-restore  synbackup restore BACKUP DIR (DIR new: nothing to stop or move
                     aside; the backup checked, copied, every byte checked, synced)
  cp                 cp -a --sparse=always BACKUP DIR; sync
  cp-b3sum           the same, then b3sum -c of the manifest's digests in DIR
                     (`synbackup verify --print-sums`): a copy checked with
                     standard tools
  dd-direct          dd oflag=direct conv=fdatasync of the backup's data bytes: the
                     write limit
  read-direct        O_DIRECT read of the backup's data extents in file order: the
                     read limit (cold)

Synapse 2.x has no restore tool of its own (its documented restore is to stop the
service and copy the backup directory into place: the cp row). When the venv runs
a Cortex (not --no-cortex), each shape is restored inside a real one, and every
synbackup restore's copy is then booted until getHealthCheck() answers nominal.
--restore --scale: cold, per size (--scale-sizes) of the mixed and log shapes,
the restore rows but cp-b3sum, in seconds per GiB, with the restore's RssAnon.

For each: wall time, CPU time (user+sys of the command and its children, from
wait4), peak anonymous memory (RssAnon summed over the process tree, sampled every
10 ms from /proc/PID/status). Then, when the venv can run a Cortex: the freeze
duration of `synbackup backup` on a live Cortex under write load.

Nothing here asserts anything about time; `--small` exists so CI can keep the harness
working.
"""
import argparse
import concurrent.futures
import glob
import json
import mmap
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time

try:
    import lmdb
except ImportError:  # pragma: no cover - told to the user below
    lmdb = None

GIB = 1 << 30
MIB = 1 << 20
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE_VERSION = 5
# --small: the size of each shape (CI keeps the harness working, quickly).
SMALL_BYTES = 24 * MIB

# The environments of the generated service directory: (relative path, share of the
# total size, kind). Shares of the big ones add up to 1; the small ones get a fixed
# few hundred KiB each, as in a real Cortex.
LAYER = 'layers/8f2d0c6b4a1e4e5f9a7b3c2d1e0f9a8b'
VIEW = 'views/1b2c3d4e5f60718293a4b5c6d7e8f901'
BIG_ENVS = [
    (f'{LAYER}/layer_v2.lmdb', 0.40, 'index'),
    (f'{LAYER}/nodedata.lmdb', 0.15, 'medium'),
    (f'{LAYER}/nodeedits.lmdb', 0.15, 'edits'),
    ('slabs/nexuslog/seqn0000000000000000.lmdb', 0.15, 'log'),
    ('axon/blob.lmdb', 0.15, 'blob'),
]
SMALL_ENVS = ['slabs/cell.lmdb', 'slabs/nexus.lmdb', 'slabs/queues.lmdb', 'slabs/graphs.lmdb',
              'slabs/drive.lmdb', f'{VIEW}/viewstate.lmdb', 'axon/axon.lmdb',
              'jsonstor/slabs/jsonstor.lmdb']

# The data shapes, each generated into its own service directory and reported on its
# own rows: {name: (big environments as (path, share, kind), small environments)}.
# - inline: layer data, values under a page (16-3000 bytes), a third deleted: five
#   layers sharing the size;
# - blob: an Axon, nearly all overflow pages (16-256 KiB values);
# - log: an append-mostly nexus log (sequential keys, culled from the front);
# - many: a Cortex with ~200 views/layers: many small environments (MANY_ENVS, fewer
#   with --small), the size shared evenly;
# - mixed: a Cortex with an Axon and a nexus log, the shape of the earlier runs.
MANY_ENVS = 200
MANY_ENVS_SMALL = 20


def layer(i):
    return 'layers/%032x' % (0x8f2d0c6b4a1e4e5f9a7b3c2d1e0f0000 + i)


def shape_envs(shape, small):
    if shape == 'inline':
        return [(f'{layer(i)}/layer_v2.lmdb', 0.2, 'inline') for i in range(5)], SMALL_ENVS[:2]
    if shape == 'blob':
        return [('axon/blob.lmdb', 1.0, 'blob')], ['axon/axon.lmdb']
    if shape == 'log':
        return [('slabs/nexuslog/seqn0000000000000000.lmdb', 1.0, 'log')], SMALL_ENVS[:2]
    if shape == 'many':
        n = MANY_ENVS_SMALL if small else MANY_ENVS
        kinds = ('index', 'inline', 'edits', 'medium')
        return ([(f'{layer(i // 2)}/{("layer_v2", "nodeedits")[i % 2]}.lmdb', 1.0 / n,
                  kinds[i % len(kinds)]) for i in range(n)], SMALL_ENVS)
    if shape == 'mixed':
        return BIG_ENVS, SMALL_ENVS
    raise SystemExit(f'unknown shape {shape!r} (inline, blob, log, many, mixed)')


SHAPES = ['inline', 'blob', 'log', 'many', 'mixed']

# Named databases per kind (Synapse opens many; the layer has the most).
INDEX_DBS = ['bybuidv3', 'byverb', 'edgesn1', 'edgesn2', 'bytag', 'bytagprop', 'byprop',
             'byarray', 'byhollow', 'bynid', 'nid2buid', 'buid2nid', 'taghist', 'propvals',
             'formcounts', 'tagcounts', 'nodeprops', 'univprops', 'ndefs', 'metadata']
DUPSORT_DBS = {'byprop', 'byarray', 'bytag', 'edgesn1', 'edgesn2', 'taghist'}


def log(msg):
    print(f'[bench {time.strftime("%H:%M:%S")}] {msg}', file=sys.stderr, flush=True)


def loadavg():
    with open('/proc/loadavg') as f:
        return float(f.read().split()[0])


def measurement_order(args, names):
    """(round, cold, name) for every measurement of a run: the caches asked for,
    the commands rotated each round so no command always follows the same one, and
    no warm read-direct (O_DIRECT reads the device whatever the cache holds)."""
    caches = [c == 'cold' for c in args.caches if args.cold or c == 'warm']
    for rnd in range(1, args.rounds + 1):
        k = (rnd - 1) % max(1, len(names))
        order = names[k:] + names[:k]
        for cold in caches:
            for name in order:
                if name == 'read-direct' and not cold:
                    continue
                yield rnd, cold, name


# ---------------------------------------------------------------------------------
# Generating the service directory


class Rand:
    """Fast random bytes: slices of one random buffer (content does not matter)."""

    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.pool = memoryview(self.rng.randbytes(8 * MIB))
        self.keys = self.rng.randbytes(32 * MIB)
        self.kpos = 0

    def key(self, n):
        if self.kpos + n > len(self.keys):
            self.keys = self.rng.randbytes(32 * MIB)
            self.kpos = 0
        k = self.keys[self.kpos:self.kpos + n]
        self.kpos += n
        return k

    def val(self, n):
        off = self.rng.randrange(0, len(self.pool) - n)
        return self.pool[off:off + n]


def value_size(kind, rng):
    r = rng.random()
    if kind == 'index':
        return rng.randint(8, 120) if r < 0.9 else rng.randint(200, 600)
    if kind == 'medium':
        return rng.randint(60, 400) if r < 0.7 else rng.randint(1000, 6000)
    if kind == 'edits':
        return rng.randint(300, 1800) if r < 0.8 else rng.randint(4000, 20000)
    if kind == 'log':
        return rng.randint(200, 1500) if r < 0.85 else rng.randint(3000, 12000)
    if kind == 'blob':
        return rng.randint(16 * 1024, 256 * 1024)
    if kind == 'inline':
        return rng.randint(16, 3000)
    return rng.randint(20, 200)


def db_names(kind):
    if kind == 'index':
        return INDEX_DBS
    if kind == 'inline':
        return [n for n in INDEX_DBS if n not in DUPSORT_DBS][:8]
    if kind == 'medium':
        return ['nodedata', 'abrv', 'names', 'props']
    if kind == 'edits':
        return ['nodeedits', 'offsets']
    if kind == 'log':
        return ['nexuslog', 'indx']
    if kind == 'blob':
        return ['blobs', 'offsets', 'metrics']
    return ['info', 'hive', 'users', 'roles', 'meta']


def used_bytes(env):
    return (env.info()['last_pgno'] + 1) * env.stat()['psize']


def map_size_for(target):
    # Synapse grows its maps in 1 GiB steps (doubling up to 100 GiB): a data.mdb is as
    # large as its map and sparse.
    size = GIB
    while size < target * 1.6:
        size *= 2
    return size


def fill(env, dbs, kind, rr, stop_bytes, seq):
    """Insert entries in random key order (sequential keys for the log) until the
    environment uses `stop_bytes`. Returns the next sequence number."""
    rng = rr.rng
    names = list(dbs)
    used = used_bytes(env)
    while used < stop_bytes:
        # Transactions of a few MiB, smaller near the end so the size is met closely.
        budget = max(128 * 1024, min(16 * MIB, (stop_bytes - used) // 2))
        with env.begin(write=True) as txn:
            done = 0
            while done < budget:
                name = rng.choice(names)
                db = dbs[name]
                items = []
                nbytes = 0
                while nbytes < min(MIB, budget - done) or not items:
                    if kind == 'log' and name == 'nexuslog':
                        k = seq.to_bytes(8, 'big')
                        seq += 1
                    else:
                        k = rr.key(rng.choice((8, 16, 32, 40)))
                    if name in DUPSORT_DBS:
                        v = rr.val(rng.randint(8, 40))
                    else:
                        v = rr.val(value_size(kind, rng))
                    items.append((k, v))
                    nbytes += len(k) + len(v) + 16
                if kind == 'log' and name == 'nexuslog':
                    txn.cursor(db=db).putmulti(items, append=True)
                else:
                    txn.cursor(db=db).putmulti(items, dupdata=name in DUPSORT_DBS)
                done += nbytes
        used = used_bytes(env)
    return seq


def delete_third(env, dbs, kind, salt):
    """Delete about a third of every database: the keys whose first byte is `salt`
    modulo 3 (keys are random, so these are runs spread over the whole key space and
    whole pages become free), or the oldest third of the log (Synapse culls its nexus
    log from the front)."""
    for name, db in dbs.items():
        if kind == 'log' and name == 'nexuslog':
            with env.begin() as txn:
                n = txn.stat(db)['entries']
            todo = n // 3
            while todo > 0:
                with env.begin(write=True) as txn:
                    cur = txn.cursor(db=db)
                    cur.first()
                    for _ in range(min(todo, 50000)):
                        if not cur.delete():
                            break
                        todo -= 1
            continue
        start = None
        while True:
            with env.begin(write=True) as txn:
                cur = txn.cursor(db=db)
                ok = cur.set_range(start) if start is not None else cur.first()
                steps = 0
                while ok and steps < 200000:
                    k = cur.key()
                    if not k:
                        ok = False
                        break
                    if (k[0] + salt) % 3 == 0:
                        ok = cur.delete()
                    else:
                        ok = cur.next()
                    steps += 1
                start = bytes(cur.key()) if ok else None
            if start is None:
                break


def make_env(path, target, kind, seed):
    os.makedirs(path, exist_ok=True)
    env = lmdb.open(path, map_size=map_size_for(target), writemap=True, max_dbs=16384,
                    sync=False, metasync=False, lock=True)
    rr = Rand(seed)
    names = db_names(kind)
    dbs = {}
    with env.begin(write=True) as txn:
        for n in names:
            dbs[n] = env.open_db(n.encode(), txn=txn, dupsort=n in DUPSORT_DBS)
    # Fill to 60 %, delete a third, fill to the target (new pages land in the freed
    # holes all over the file, so B-tree order and file order differ: fragmentation),
    # delete a third again (free pages at the end, as in a service that deleted data).
    seq = fill(env, dbs, kind, rr, int(target * 0.6), 0)
    delete_third(env, dbs, kind, 0)
    fill(env, dbs, kind, rr, target, seq)
    delete_third(env, dbs, kind, 1)
    env.sync(True)
    info = used_bytes(env)
    env.close()
    return info


def generate(src, total, seed, shape='mixed', small=False):
    if os.path.exists(src):
        shutil.rmtree(src)
    os.makedirs(src)
    rng = random.Random(seed)

    def small_file(rel, size, mode=0o644):
        p = os.path.join(src, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, 'wb') as f:
            f.write(rng.randbytes(size))
        os.chmod(p, mode)

    with open(os.path.join(src, 'cell.guid'), 'w') as f:
        f.write('%032x' % rng.getrandbits(128))
    for sub in ('axon', 'jsonstor'):
        os.makedirs(os.path.join(src, sub), exist_ok=True)
        with open(os.path.join(src, sub, 'cell.guid'), 'w') as f:
            f.write('%032x' % rng.getrandbits(128))
    small_file('cookie.secret', 64, 0o600)
    small_file('sslkey.pem', 1704, 0o600)
    small_file('sslcert.pem', 1200)
    small_file('certs/cas/synapse.crt', 1200)
    small_file('cell.yaml', 300)
    for name in ('cell', 'nexus', 'queues', 'graphs', 'drive'):
        small_file(f'slabs/{name}.opts.yaml', 40)
    os.makedirs(os.path.join(src, 'tmp'), exist_ok=True)
    small_file('tmp/ignored', 4096)
    sizes = {}
    big, smalls = shape_envs(shape, small)
    t0 = time.monotonic()
    # One process per core, the largest environments first: py-lmdb's inserts are
    # CPU-bound, and each environment has its own seed, so the data is the same as
    # when they are made one after the other.
    jobs = [(os.path.join(src, rel), max(256 * 1024, int(total * share)), kind, seed + i)
            for i, (rel, share, kind) in enumerate(big)]
    order = sorted(range(len(big)), key=lambda i: -jobs[i][1])
    with concurrent.futures.ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        futures = {i: pool.submit(make_env, *jobs[i]) for i in order}
        for i in order:
            rel = big[i][0]
            sizes[rel] = futures[i].result()
            if len(big) <= 10:
                log(f'  {rel}: {sizes[rel] / MIB:.0f} MiB used '
                    f'({time.monotonic() - t0:.1f} s since the start)')
    if len(big) > 10:
        log(f'  {len(big)} environments: {sum(sizes.values()) / MIB:.0f} MiB used in '
            f'{time.monotonic() - t0:.1f} s')
    for j, rel in enumerate(smalls):
        sizes[rel] = make_env(os.path.join(src, rel), 256 * 1024, 'small', seed + 100 + j)
    return sizes


def ensure_source(args, name='mixed', size_gib=None):
    if size_gib is None:
        size_gib = args.size_gib
    total = int((SMALL_BYTES if args.small else size_gib * GIB))
    shape = {'version': SHAPE_VERSION, 'total': total, 'seed': args.seed, 'shape': name}
    src = os.path.join(args.workdir, f'src-{name}' + ('-small' if args.small else '')
                       + (f'-{size_gib:g}g' if size_gib != args.size_gib or args.scale else ''))
    stamp = src + '.shape.json'
    if not args.regen and os.path.exists(stamp):
        with open(stamp) as f:
            if json.load(f) == shape:
                log(f'reusing {src}')
                return src
    log(f'generating {src} ({total / GIB:.2f} GiB)')
    t0 = time.monotonic()
    if os.path.exists(stamp):
        os.unlink(stamp)
    generate(src, total, args.seed, name, args.small)
    with open(stamp, 'w') as f:
        json.dump(shape, f)
    log(f'generated in {time.monotonic() - t0:.0f} s')
    return src


def env_dirs(src):
    out = []
    for p in sorted(glob.glob(os.path.join(src, '**', 'data.mdb'), recursive=True)):
        rel = os.path.relpath(os.path.dirname(p), src)
        if rel.split(os.sep)[0] in ('tmp', 'backups') or '/tmp/' in rel:
            continue
        out.append(rel)
    return out


def describe_source(src):
    apparent = allocated = 0
    for root, _, files in os.walk(src):
        for f in files:
            st = os.lstat(os.path.join(root, f))
            apparent += st.st_size
            allocated += st.st_blocks * 512
    return apparent, allocated


def live_runs(src, envs):
    """The live pages of every environment as runs in file order: [(data.mdb, [(offset,
    length), ...])]. Pages up to the last used one, less the free list's pages
    (`mdb_stat -fff` lists them as runs); the used range when mdb_stat is missing."""
    out = []
    for e in envs:
        path = os.path.join(src, e, 'data.mdb')
        env = lmdb.open(os.path.join(src, e), readonly=True, lock=False, max_dbs=16384)
        psize = env.stat()['psize']
        npages = env.info()['last_pgno'] + 1
        env.close()
        free = []
        if shutil.which('mdb_stat'):
            text = subprocess.run(['mdb_stat', '-fff', os.path.join(src, e)], check=True,
                                  capture_output=True, text=True).stdout
            section = False
            for line in text.splitlines():
                if line.startswith('Freelist Status'):
                    section = True
                elif not line.startswith(' '):
                    section = False
                elif section:
                    w = line.strip()
                    if w and w[0].isdigit():
                        pg, _, n = w.partition('[')
                        free.append((int(pg), int(n.rstrip(']')) if n else 1))
        free.sort()
        runs = []
        pos = 0
        for pg, n in free:
            if pg > pos:
                runs.append((pos * psize, (pg - pos) * psize))
            pos = max(pos, pg + n)
        if npages > pos:
            runs.append((pos * psize, (npages - pos) * psize))
        out.append((path, runs))
    return out


# The read limit reads free gaps shorter than this along with the live pages around
# them: on a device one large read costs less than two small ones with a seek.
READ_MERGE_GAP = 1 * MIB


def merged_runs(runs, gap):
    out = []
    for off, length in runs:
        if out and off - (out[-1][0] + out[-1][1]) < gap:
            out[-1] = (out[-1][0], off + length - out[-1][0])
        else:
            out.append((off, length))
    return out


def read_runs(spec):
    """The read limit: read the live pages of `spec` (a live_runs() JSON) with O_DIRECT
    in file order, free gaps under READ_MERGE_GAP read through, in requests of at most
    8 MiB, file by file: a sequential read of what a copy must at least read."""
    with open(spec) as f:
        files = json.load(f)
    buf = mmap.mmap(-1, 8 * MIB)
    view = memoryview(buf)
    total = 0
    for path, runs in files:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        except OSError:
            fd = os.open(path, os.O_RDONLY)  # a filesystem without O_DIRECT (tmpfs)
        try:
            for off, length in merged_runs(runs, READ_MERGE_GAP):
                while length > 0:
                    want = min(length, 8 * MIB)
                    n = os.preadv(fd, [view[:want]], off)
                    if n <= 0:
                        break
                    off += n
                    length -= n
                    total += n
                    if n < want:
                        break  # the end of the file (a run rounded up to whole pages)
        finally:
            os.close(fd)
    print(total)
    return 0


# ---------------------------------------------------------------------------------
# Measuring


def tree_pids(pid):
    out = [pid]
    i = 0
    while i < len(out):
        p = out[i]
        i += 1
        for task in glob.glob(f'/proc/{p}/task/*/children'):
            try:
                with open(task) as f:
                    out.extend(int(c) for c in f.read().split())
            except OSError:
                pass
    return out


def rss_anon_kib(pid):
    try:
        with open(f'/proc/{pid}/status') as f:
            for line in f:
                if line.startswith('RssAnon:'):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(cmd, env=None):
    """Run cmd; return wall, cpu (user+sys of it and its children), peak RssAnon of
    the process tree (MiB), exit code and stdout."""
    import tempfile
    # Output goes to files, read after exit: a pipe read only then would block a
    # command that prints more than 64 KiB (the Python tool logs every environment).
    out_f = tempfile.TemporaryFile()
    err_f = tempfile.TemporaryFile()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=out_f, stderr=err_f, env=env)
    peak = 0
    rusage = None
    status = None
    while True:
        pid, st, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            wall = time.perf_counter() - t0
            rusage, status = ru, st
            break
        peak = max(peak, sum(rss_anon_kib(p) for p in tree_pids(proc.pid)))
        time.sleep(0.01)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out_f.seek(0)
    err_f.seek(0)
    stdout = out_f.read().decode(errors='replace')
    stderr = err_f.read().decode(errors='replace')
    out_f.close()
    err_f.close()
    return {
        'wall': wall,
        'cpu': rusage.ru_utime + rusage.ru_stime,
        'user': rusage.ru_utime,
        'sys': rusage.ru_stime,
        'rss_anon_mib': peak / 1024,
        'rc': proc.returncode,
        'stdout': stdout,
        'stderr': stderr[-2000:],
    }


# ---------------------------------------------------------------------------------
# Synapse 3.7.0: the Debian sid tree of tests/synapse3 (python3.14), entered by
# tests/synapse3/in-root with the workdir bound at its own path.

SYN3_PYTHON = '/opt/syn3/bin/python'
SYN3_COMMANDS = ('synbackup-3', 'python-tool-3', 'stream-3', 'python-import-3')


def syn3_root(args):
    """The sid tree, when built (build-root writes its stamp last), else None."""
    root = args.syn3_root
    return root if os.path.exists(os.path.join(root, 'etc/synbackup-syn3-root.stamp')) else None


def in_root(args, *cmd):
    """argv running cmd in the 3.x tree with the workdir visible."""
    return ['env', f'SYNBACKUP_TEST_SYN3_ROOT={args.syn3_root}',
            os.path.join(REPO, 'tests/synapse3/in-root'), '--bind', args.workdir, '--', *cmd]


class Cell3:
    """A real Synapse 3.7.0 Cortex on CELL3 (made fresh for the run), listening on
    tcp:// on loopback besides its socket (root's password in its cell.yaml), and
    each shape's directory hard-linked into it in turn (same inodes: the same page
    cache)."""

    def __init__(self, args):
        self.args = args
        self.dir = os.path.join(args.workdir, 'cell3')
        rmtree(self.dir)
        os.makedirs(self.dir)
        with open(os.path.join(self.dir, 'cell.yaml'), 'w') as f:
            f.write('auth:passwd: bench\n')
        port = free_port()
        self.url = f'tcp://root:bench@127.0.0.1:{port}/'
        self.logf = open(os.path.join(args.workdir, 'cell3.log'), 'wb')
        log('starting a Synapse 3.7.0 Cortex for the 3.7.0 peers')
        self.proc = subprocess.Popen(
            in_root(args, SYN3_PYTHON, '-m', 'synapse.servers.cortex', '--telepath',
                    f'tcp://127.0.0.1:{port}/', '--https', '0', self.dir),
            stdout=self.logf, stderr=subprocess.STDOUT, start_new_session=True)
        if subprocess.run(in_root(args, SYN3_PYTHON, '-c', WAIT, self.dir, '180')).returncode:
            self.stop()
            raise SystemExit('the 3.7.0 Cortex did not answer within 180 s (see cell3.log)')

    def attach(self, src):
        """CELL3/shape: a hard-linked copy of the shape's directory; CELL3 returned."""
        self.detach()
        subprocess.run(['cp', '-al', src, os.path.join(self.dir, 'shape')], check=True)
        return self.dir

    def detach(self):
        rmtree(os.path.join(self.dir, 'shape'))

    def cpu(self):
        """CPU seconds of the cell and its reaped children (its backup processes)."""
        with open(f'/proc/{self.proc.pid}/stat') as f:
            fields = f.read().rsplit(')', 1)[1].split()
        # utime, stime, cutime, cstime: fields 14-17, counted from 1 with pid and comm.
        return sum(int(x) for x in fields[11:15]) / os.sysconf('SC_CLK_TCK')

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.logf.close()
        rmtree(self.dir)


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def drop_caches():
    subprocess.run(['sync'], check=True)
    with open('/proc/sys/vm/drop_caches', 'w') as f:
        f.write('3\n')


def device_queue(path):
    """The sysfs queue/ directory of the block device `path` is on (a partition's is
    its disk's), or None (tmpfs, btrfs, overlayfs, NFS)."""
    st = os.stat(path)
    dev = f'/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}'
    for d in (dev, os.path.join(dev, '..')):
        q = os.path.join(d, 'queue')
        if os.path.exists(os.path.join(q, 'read_ahead_kb')):
            return os.path.realpath(q)
    return None


def device_settings(path):
    """What the device under `path` reads ahead and its largest request, in KiB: one
    readahead(2) call reads at most the larger of the two."""
    q = device_queue(path)
    if q is None:
        return {}
    out = {}
    for name in ('read_ahead_kb', 'max_sectors_kb', 'rotational'):
        try:
            with open(os.path.join(q, name)) as f:
                out[name] = int(f.read().strip())
        except (OSError, ValueError):
            pass
    return out


class RunSettings:
    """Kernel settings (files under /sys) changed for the run and set back after, in
    the reverse order, whatever ends the run."""

    def __init__(self):
        self.old = {}

    def set(self, path, value):
        with open(path) as f:
            old = f.read().strip()
        try:
            with open(path, 'w') as f:
                f.write(f'{value}\n')
        except OSError as e:
            raise SystemExit(f'{path}: cannot set {value} ({e}); run as root or drop the '
                             f'option') from e
        self.old[path] = old
        log(f'{path}: {old} -> {value} for this run')

    def restore(self):
        for path, value in reversed(list(self.old.items())):
            with open(path, 'w') as f:
                f.write(f'{value}\n')
            log(f'{path}: back to {value}')
        self.old = {}


def set_read_ahead(settings, path, kib):
    """--read-ahead-kb: the device's readahead for the run."""
    q = device_queue(path)
    if q is None:
        raise SystemExit(f'{path}: not on a block device; drop --read-ahead-kb')
    settings.set(os.path.join(q, 'read_ahead_kb'), kib)


PAGE_REPORTING = '/sys/module/page_reporting/parameters'


def page_reporting():
    """This guest's free page reporting (virtio-balloon's: free memory handed back
    to the host, and paid again on its next first touch), as its module parameters,
    or {} on a host without it."""
    out = {}
    for name in ('page_reporting_order', 'free_bitmap_enable', 'reported_kib'):
        try:
            with open(os.path.join(PAGE_REPORTING, name)) as f:
                out[name] = f.read().strip()
        except OSError:
            pass
    return out


def memory_line(before, after, held):
    """The free page reporting part of a report's first line."""
    if 'page_reporting_order' not in before:
        return 'no free page reporting'
    state = f'free page reporting order {before["page_reporting_order"]}'
    if held:
        state += ' (held off for the run: --hold-freed-memory)'
    if before.get('free_bitmap_enable'):
        state += f', free_bitmap_enable {before["free_bitmap_enable"]}'
    if 'reported_kib' in before and 'reported_kib' in after:
        state += (f', {(int(after["reported_kib"]) - int(before["reported_kib"])) / 1024:.0f}'
                  f' MiB reported during the run')
    return state


def hold_freed_memory(settings):
    """--hold-freed-memory: free page reporting turned off for the run, so that memory
    the guest frees (the cache a cold round drops) stays backed by the host and a run
    measures the commands, not the hypervisor's first touch of memory handed back.
    Memory handed back before (or never touched since boot) is touched once first
    (`back_free_memory`), so that every page a command gets from then on is backed.
    A page_reporting_order above the buddy allocator's largest order: no free block
    is ever large enough to be reported."""
    state = page_reporting()
    if 'page_reporting_order' not in state:
        log('no free page reporting on this host: --hold-freed-memory has nothing to do')
        return
    for name, value in (('free_bitmap_enable', 'N'), ('page_reporting_order', '11')):
        if name in state:
            settings.set(os.path.join(PAGE_REPORTING, name), value)
    back_free_memory()


def back_free_memory(spare=2 * GIB):
    """Write once into all but `spare` of the available memory (anonymous, freed
    right after): with free page reporting off, the host backs every page the guest
    has from then on. The page cache is evicted to make room."""
    with open('/proc/meminfo') as f:
        avail = next(int(line.split()[1]) * 1024 for line in f
                     if line.startswith('MemAvailable:'))
    size = max(0, avail - spare) // MIB * MIB
    if not size:
        return
    t0 = time.monotonic()
    chunk = b'\1' * (64 * MIB)
    with mmap.mmap(-1, size) as m:
        for _ in range(size // len(chunk)):
            m.write(chunk)
        m.write(chunk[:size % len(chunk)])
    log(f'touched {size / GIB:.1f} GiB of free memory once in {time.monotonic() - t0:.1f} s')


def warm(paths):
    """Read every data extent of every file under paths into the page cache."""
    for top in paths:
        for root, _, files in os.walk(top):
            for name in files:
                p = os.path.join(root, name)
                try:
                    fd = os.open(p, os.O_RDONLY)
                except OSError:
                    continue
                try:
                    size = os.fstat(fd).st_size
                    pos = 0
                    while pos < size:
                        try:
                            start = os.lseek(fd, pos, os.SEEK_DATA)
                        except OSError:
                            break
                        stop = os.lseek(fd, start, os.SEEK_HOLE)
                        os.posix_fadvise(fd, start, stop - start, os.POSIX_FADV_WILLNEED)
                        off = start
                        while off < stop:
                            n = len(os.pread(fd, min(8 * MIB, stop - off), off))
                            if n == 0:
                                break
                            off += n
                        pos = stop
                finally:
                    os.close(fd)


def rmtree(p):
    if os.path.lexists(p):
        shutil.rmtree(p)


class Bench:
    def __init__(self, args, src, shape='mixed', cell3=None):
        self.args = args
        self.src = src
        self.shape = shape
        self.out = os.path.join(args.workdir, 'out')
        self.envs = env_dirs(src)
        self.cell3 = cell3
        if cell3:
            self.src3 = cell3.attach(src)
            self.envs3 = env_dirs(self.src3)
        self.dd_bytes = None
        self.results = []
        self.runs_file = os.path.join(args.workdir, f'live-runs-{os.path.basename(src)}.json')
        runs = live_runs(src, self.envs)
        self.live_bytes = sum(n for _, rs in runs for _, n in rs)
        with open(self.runs_file, 'w') as f:
            json.dump(runs, f)

    def commands(self):
        a = self.args
        dst = os.path.join(self.out, 'backup')
        py = os.path.join(a.venv, 'bin', 'python')
        cmds = {}
        cmds['synbackup'] = [a.synbackup, 'backup', self.src, dst, '--json']
        cmds['synbackup-j1'] = [a.synbackup, 'backup', self.src, dst, '--json', '--jobs', '1']
        for name, path in a.variants:
            # NAME=PATH, or NAME=PATH:EXTRA ARGS (e.g. prefetch-j1=/tmp/sb:--jobs 1)
            path, _, extra = path.partition(':')
            cmds[name] = [path, 'backup', self.src, dst, '--json'] + extra.split()
        if os.path.exists(py):
            cmds['python-tool'] = ['sh', '-c', f'"{py}" -m synapse.tools.service.backup '
                                   f'"{self.src}" "{dst}" && sync']
            cmds['python-import'] = [py, '-c', 'import synapse.tools.service.backup']
        if shutil.which('mdb_copy'):
            steps = ' && '.join(f'mkdir -p "{dst}/{e}" && mdb_copy -c "{self.src}/{e}" "{dst}/{e}"'
                                for e in self.envs)
            cmds['mdb_copy'] = ['sh', '-c', f'{steps} && sync']
        if self.dd_bytes:
            count = -(-self.dd_bytes // MIB)
            cmds['dd'] = ['dd', 'if=/dev/zero', f'of={self.out}/dd.out', 'bs=1M',
                          f'count={count}', 'conv=fdatasync']
            cmds['dd-direct'] = ['dd', 'if=/dev/zero', f'of={self.out}/dd.out', 'bs=1M',
                                 f'count={count}', 'oflag=direct', 'conv=fdatasync']
        cmds['read-direct'] = [sys.executable, os.path.abspath(__file__), '--read-runs',
                               self.runs_file]
        if self.cell3:
            cmds['synbackup-3'] = [a.synbackup, 'backup', self.src3, dst, '--json']
            tool = [SYN3_PYTHON, '-m', 'synapse.tools.service.backup']
            cmds['python-tool-3'] = ['sh', '-c', '"$@" && sync', 'sh',
                                     *in_root(a, *tool, self.src3, dst)]
            cmds['stream-3'] = ['sh', '-c', '"$@" && sync', 'sh',
                                *in_root(a, *tool, self.cell3.url, dst + '.zip')]
            cmds['python-import-3'] = in_root(a, SYN3_PYTHON, '-c',
                                              'import synapse.tools.service.backup')
        return {k: v for k, v in cmds.items()
                if k in a.commands or k in dict(a.variants)}

    def prepare(self, cold):
        rmtree(self.out)
        os.makedirs(self.out)
        if cold:
            drop_caches()
        else:
            subprocess.run(['sync'], check=True)
            warm([self.src, os.path.join(self.args.venv, 'lib')]
                 + ([os.path.join(self.args.syn3_root, 'opt/syn3/lib')] if self.cell3 else []))
        # Let the kernel finish with what was just freed (on a VM with free page
        # reporting, freed memory goes back to the host a moment later, and whoever
        # touches it next pays): every command then starts from the same state.
        time.sleep(self.args.settle)

    def commands_synbackup(self):
        return [self.args.synbackup, 'backup', self.src, os.path.join(self.out, 'backup'),
                '--json']

    def run_one(self, name, cmd, cold, rnd):
        self.prepare(cold)
        load = loadavg()
        cell_cpu = self.cell3.cpu() if self.cell3 and name in SYN3_COMMANDS else None
        r = measure(cmd)
        r.update(name=name, cache='cold' if cold else 'warm', round=rnd, load=load,
                 shape=self.shape)
        if r['rc'] != 0:
            raise SystemExit(f'{name} failed ({r["rc"]}): {r["stderr"]}')
        if cell_cpu is not None:
            r['cell_cpu'] = self.cell3.cpu() - cell_cpu
            if name == 'stream-3':
                # The cell's backup process reads and compresses: its work is the tool's.
                r['cpu'] += r['cell_cpu']
        if name.startswith('synbackup') or name in dict(self.args.variants):
            s = json.loads(r['stdout'])
            r['bytes'] = s['bytes_written']
            r['tool_seconds'] = s['seconds']
        elif name in ('python-tool', 'mdb_copy'):
            r['bytes'] = sum(os.path.getsize(os.path.join(self.out, 'backup', e, 'data.mdb'))
                             for e in self.envs)
        elif name == 'python-tool-3':
            r['bytes'] = sum(os.path.getsize(os.path.join(self.out, 'backup', e, 'data.mdb'))
                             for e in self.envs3)
        elif name == 'stream-3':
            r['bytes'] = os.path.getsize(os.path.join(self.out, 'backup.zip'))
        elif name == 'read-direct':
            r['bytes'] = int(r['stdout'].strip() or 0)
        r.pop('stdout')
        r.pop('stderr')
        log(f'{self.shape:6} round {rnd} {r["cache"]:4} {name:14} wall {r["wall"]:6.2f} s  cpu {r["cpu"]:5.2f} s'
            f'  RssAnon {r["rss_anon_mib"]:6.1f} MiB  load {load:.2f}')
        self.results.append(r)
        return r

    def run(self):
        # A first synbackup run checks the setup and tells dd how many bytes to write.
        self.prepare(False)
        r = measure(self.commands()['synbackup'] if 'synbackup' in self.args.commands
                    else [self.args.synbackup, 'backup', self.src,
                          os.path.join(self.out, 'backup'), '--json'])
        if r['rc'] != 0:
            raise SystemExit(f'synbackup failed: {r["stderr"]}')
        self.dd_bytes = json.loads(r['stdout'])['bytes_written']
        log(f'synbackup writes {self.dd_bytes / 1e9:.3f} GB; dd will write as much')
        for rnd, cold, name in measurement_order(self.args, list(self.commands())):
            self.run_one(name, self.commands()[name], cold, rnd)
        rmtree(self.out)
        if self.cell3:
            self.cell3.detach()


# ---------------------------------------------------------------------------------
# Restore: a backup back into a service directory (--restore)

RESTORE_COMMANDS = ('synbackup-restore', 'cp', 'cp-b3sum', 'dd-direct', 'read-direct')


def data_runs(top):
    """Every regular file under top with its data extents (holes left out), in
    walk order: [(path, [(offset, length), ...])], and their total."""
    out = []
    total = 0
    for root, dirs, files in os.walk(top):
        dirs.sort()
        for name in sorted(files):
            p = os.path.join(root, name)
            fd = os.open(p, os.O_RDONLY)
            try:
                size = os.fstat(fd).st_size
                runs = []
                pos = 0
                while pos < size:
                    try:
                        start = os.lseek(fd, pos, os.SEEK_DATA)
                    except OSError:
                        break
                    stop = os.lseek(fd, start, os.SEEK_HOLE)
                    # Whole pages, as O_DIRECT reads them (the last one ends short).
                    runs.append((start, -(-(stop - start) // 4096) * 4096))
                    total += stop - start
                    pos = stop
            finally:
                os.close(fd)
            out.append((p, runs))
    return out, total


class RestoreBench:
    """One shape's restore rows: its backup made once, then every command, warm and
    cold, each round."""

    def __init__(self, args, src, shape):
        self.args = args
        self.shape = shape
        self.out = os.path.join(args.workdir, 'out')
        self.dir = os.path.join(self.out, 'svc')
        self.backup = os.path.join(args.workdir, f'restore-backup-{os.path.basename(src)}')
        self.results = []
        # Set by restore_run when the source is a real Cortex: each synbackup
        # restore's copy is then booted and timed to its health check.
        self.boot = False
        rmtree(self.backup)
        r = measure([args.synbackup, 'backup', src, self.backup, '--json'])
        if r['rc'] != 0:
            raise SystemExit(f'synbackup backup failed: {r["stderr"]}')
        self.sums = self.backup + '.b3sums'
        with open(self.sums, 'wb') as f:
            subprocess.run([args.synbackup, 'verify', '--print-sums', self.backup], stdout=f,
                           check=True)
        runs, self.data_bytes = data_runs(self.backup)
        self.runs_file = self.backup + '.runs.json'
        with open(self.runs_file, 'w') as f:
            json.dump(runs, f)
        log(f'{shape}: backup of {self.data_bytes / 1e9:.3f} GB of data at {self.backup}')

    def commands(self):
        a = self.args
        cp = f'cp -a --sparse=always "{self.backup}" "{self.dir}" && sync'
        count = -(-self.data_bytes // MIB)
        cmds = {
            'synbackup-restore': [a.synbackup, 'restore', self.backup, self.dir],
            'cp': ['sh', '-c', cp],
            'cp-b3sum': ['sh', '-c', f'{cp} && cd "{self.dir}" && b3sum -c --quiet "{self.sums}"'],
            'dd-direct': ['dd', 'if=/dev/zero', f'of={self.out}/dd.out', 'bs=1M',
                          f'count={count}', 'oflag=direct', 'conv=fdatasync'],
            'read-direct': [sys.executable, os.path.abspath(__file__), '--read-runs',
                            self.runs_file],
        }
        for name, path in a.variants:
            # Another build's restore, A/B (NAME=PATH).
            cmds[name] = [path.partition(':')[0], 'restore', self.backup, self.dir]
        return {k: v for k, v in cmds.items() if k in a.commands or k in dict(a.variants)}

    def prepare(self, cold):
        rmtree(self.out)
        os.makedirs(self.out)
        if cold:
            drop_caches()
        else:
            subprocess.run(['sync'], check=True)
            warm([self.backup])
        time.sleep(self.args.settle)

    def run(self):
        for rnd, cold, name in measurement_order(self.args, list(self.commands())):
            self.run_one(rnd, cold, name)
        self.cleanup()

    def run_one(self, rnd, cold, name):
        """One measurement of `name`, prepared warm or cold; its result. With
        `boot`, a synbackup restore's copy is then started as a Cortex and the
        time until it answers its health check nominal is `boot` in the result."""
        poller = HealthPoller(self.args) if self.boot and name == 'synbackup-restore' else None
        try:
            self.prepare(cold)
            load = loadavg()
            r = measure(self.commands()[name])
            r.update(name=name, cache='cold' if cold else 'warm', round=rnd, load=load,
                     shape=self.shape, bytes=self.data_bytes)
            if r['rc'] != 0:
                raise SystemExit(f'{name} failed ({r["rc"]}): {r["stderr"]}')
            if poller:
                r['boot'] = poller.boot(self.dir, f'restore-boot-{self.shape}.log')
                log(f'{self.shape:6} round {rnd} {r["cache"]:4} boot to health nominal '
                    f'{r["boot"]:6.2f} s')
        finally:
            if poller:
                poller.stop()
        r.pop('stdout')
        r.pop('stderr')
        log(f'{self.shape:6} round {rnd} {r["cache"]:4} {name:17} wall '
            f'{r["wall"]:6.2f} s  cpu {r["cpu"]:5.2f} s  RssAnon '
            f'{r["rss_anon_mib"]:6.1f} MiB  load {load:.2f}')
        self.results.append(r)
        return r

    def cleanup(self):
        """The copies, the backup and its side files removed."""
        rmtree(self.out)
        for p in (self.backup, self.sums, self.runs_file):
            if os.path.isdir(p):
                rmtree(p)
            elif os.path.exists(p):
                os.unlink(p)


def restore_table(results):
    """Per shape: the medians of every restore row, and issue 36's ratios."""
    by = {}
    shapes = []
    for r in results:
        by.setdefault((r['shape'], r['name'], r['cache']), []).append(r)
        if r['shape'] not in shapes:
            shapes.append(r['shape'])

    def wall(shape, name, cache):
        rs = by.get((shape, name, cache))
        return med([r['wall'] for r in rs]) if rs else float('nan')

    lines = ['| shape | cache | GB of data | synbackup restore s (min–max) | cp + sync s | '
             'cp + sync + b3sum -c s | read limit s | write limit s | restore ÷ cp (≤ 1.3) | '
             'restore ÷ cp + b3sum | restore ÷ read + write limit (≤ 1.3, cold) | '
             'restore CPU s | restore RssAnon MiB |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    for shape in shapes:
        for cache in ('warm', 'cold'):
            rs = by.get((shape, 'synbackup-restore', cache))
            if not rs:
                continue
            w = [r['wall'] for r in rs]
            m = med(w)
            cp, cpb = wall(shape, 'cp', cache), wall(shape, 'cp-b3sum', cache)
            rd, wr = wall(shape, 'read-direct', 'cold'), wall(shape, 'dd-direct', cache)
            floor = (rd + wr) if cache == 'cold' else float('nan')

            def f(x):
                return '' if x != x else f'{x:.2f}'

            def verdict(x):
                return '' if x != x else f'{x:.2f} {"met" if x <= 1.3 else "**missed**"}'
            lines.append(
                f'| {shape} | {cache} | {rs[0]["bytes"] / 1e9:.3f} | {m:.2f} ({min(w):.2f}–'
                f'{max(w):.2f}) | {f(cp)} | {f(cpb)} | {f(rd) if cache == "cold" else ""} | '
                f'{f(wr)} | {verdict(m / cp)} | {f(m / cpb)} | '
                f'{verdict(m / floor) if cache == "cold" else ""} | '
                f'{med([r["cpu"] for r in rs]):.2f} | '
                f'{max(r["rss_anon_mib"] for r in rs):.1f} |')
    loads = [r['load'] for r in results] or [float('nan')]
    lines.append('')
    lines.append(f'{len(results)} measurements; load average (1 min) at the start of each: '
                 f'{min(loads):.2f}–{max(loads):.2f}.')
    return '\n'.join(lines)


def restore_run(args):
    """--restore: every shape's restore rows. When the venv runs a Cortex (and
    not --no-cortex), each shape is restored inside a real one and every synbackup
    restore's copy is booted: the boot table."""
    results = []
    template = cortex_template(args) if boots(args) else None
    try:
        for shape in args.shapes:
            src = ensure_source(args, shape)
            if template:
                src = in_cortex(args, template, src)
            b = RestoreBench(args, src, shape)
            b.boot = template is not None
            b.run()
            results.extend(b.results)
            if template:
                rmtree(src)
    finally:
        if template:
            rmtree(template)
    table = restore_table(results)
    if template:
        table += '\n\n' + boot_table(results)
    return table, results


# ---------------------------------------------------------------------------------
# --restore: the restored Cortex booted until it answers its health check

def boots(args):
    return args.cortex and os.path.exists(os.path.join(args.venv, 'bin', 'python'))


def cortex_template(args):
    """A real 2.256.0 Cortex's directory: started on an empty directory until it
    answers, then stopped. Each shape goes inside a copy of it."""
    py = os.path.join(args.venv, 'bin', 'python')
    d = os.path.join(args.workdir, 'restore-cortex-template')
    rmtree(d)
    os.makedirs(d)
    log('making a Cortex to restore the shapes in')
    stop_procs([start_cortex(py, d, 'restore-cortex-template.log', args)])
    return d


def in_cortex(args, template, src):
    """A copy of the Cortex `template` holding the shape `src` as its `shape`
    directory (hard links: the same inodes, no copy). Synapse does not open it,
    but it is restored with the Cortex, so the restore moves the shape's bytes and
    the Cortex's own, and the copy boots."""
    d = os.path.join(args.workdir, f'cortex-{os.path.basename(src)}')
    rmtree(d)
    subprocess.run(['cp', '-a', template, d], check=True)
    subprocess.run(['cp', '-al', src, os.path.join(d, 'shape')], check=True)
    return d


# Started before the cache is prepared (its own imports done, then held off the
# device like everything else); given the directory once the Cortex is started, it asks the
# cell's socket for getHealthCheck() every 20 ms and prints the CLOCK_MONOTONIC
# time of the first nominal answer.
HEALTH = r'''
import asyncio, sys, time
import synapse.telepath as s_telepath
async def main(d, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            async with await s_telepath.openurl('cell://' + d) as cell:
                health = await cell.getHealthCheck()
                if health['status'] == 'nominal':
                    print(time.monotonic(), flush=True)
                    return 0
        except Exception:
            pass
        await asyncio.sleep(0.02)
    return 1
print('ready', flush=True)
d = sys.stdin.readline().strip()
sys.exit(asyncio.run(main(d, float(sys.argv[1]))))
'''
BOOT_TIMEOUT = 300


class HealthPoller:
    """Times a restored Cortex from its start to its first nominal health check."""

    def __init__(self, args):
        self.args = args
        self.py = os.path.join(args.venv, 'bin', 'python')
        self.core = None
        self.proc = subprocess.Popen([self.py, '-c', HEALTH, str(BOOT_TIMEOUT)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, start_new_session=True)
        if self.proc.stdout.readline().strip() != 'ready':
            raise SystemExit('the health check client did not start (synapse in the venv?)')

    def boot(self, d, logname):
        """Start the Cortex on `d`; seconds until its health check is nominal. The
        Cortex is stopped again by stop()."""
        logf = open(os.path.join(self.args.workdir, logname), 'wb')
        t0 = time.monotonic()
        self.core = subprocess.Popen([self.py, '-m', 'synapse.servers.cortex', '--telepath',
                                      'tcp://127.0.0.1:0', '--https', '0', d],
                                     stdout=logf, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        logf.close()
        self.proc.stdin.write(d + '\n')
        self.proc.stdin.flush()
        out = self.proc.stdout.readline().strip()
        if self.proc.wait() != 0 or not out:
            raise SystemExit(f'the restored Cortex on {d} did not answer its health check '
                             f'nominal within {BOOT_TIMEOUT} s (see {logname})')
        return float(out) - t0

    def stop(self):
        stop_procs([self.proc, self.core])


def boot_table(results):
    """Per shape and cache: the synbackup restore, the restored Cortex's boot to a
    nominal health check, and the two together (the service's downtime when its
    directory is lost, less the operator)."""
    by = {}
    for r in results:
        if r['name'] == 'synbackup-restore' and 'boot' in r:
            by.setdefault((r['shape'], r['cache']), []).append(r)
    lines = ['### Restore, then the restored Cortex up (2.256.0, boot to a nominal '
             'getHealthCheck over its socket)', '',
             '| shape | cache | synbackup restore s | boot to health s (min–max) | '
             'restore + boot s |', '|---|---|---|---|---|']
    for (shape, cache), rs in by.items():
        boot = [r['boot'] for r in rs]
        both = [r['wall'] + r['boot'] for r in rs]
        lines.append(f'| {shape} | {cache} | {med([r["wall"] for r in rs]):.2f} | '
                     f'{med(boot):.2f} ({min(boot):.2f}–{max(boot):.2f}) | {med(both):.2f} |')
    return '\n'.join(lines)


# --restore --scale: restore time per GiB and memory as the backup grows

RESTORE_SCALE_SHAPES = 'mixed,log'
RESTORE_SCALE_COMMANDS = ('synbackup-restore', 'cp', 'dd-direct', 'read-direct')


def restore_scale_need(size_gib):
    """Bytes free that one size of the restore scale run needs in the workdir at
    its peak: the generated shape and its backup while the backup is made (the
    shape is removed then), later the backup and one copy of it; a backup is at
    most as large as the shape's allocated size. 5 % and 1 GiB to spare."""
    return int(2 * size_gib * GIB * 1.05) + GIB


def refuse_no_room(args, size_gib):
    free = shutil.disk_usage(args.workdir).free
    need = restore_scale_need(size_gib)
    if free < need:
        raise SystemExit(f'{args.workdir}: {free / GIB:.1f} GiB free, the restore scale run '
                         f'needs {need / GIB:.1f} GiB at {size_gib:g} GiB (the shape and its '
                         'backup, then the backup and one copy); free some room, give '
                         'smaller --scale-sizes or another --workdir')


def restore_scale_run(args):
    """--restore --scale: per size and shape, one backup of the generated shape
    (the shape then removed: only the backup and one copy are ever held), then
    cold, once each: synbackup restore, cp -a + sync, the write limit and the read
    limit. Time per GiB of the backup's data should stay flat as it grows, and the
    restore's peak RssAnon small. Every size's files are removed before the next."""
    for size in args.scale_sizes:
        restore_scale_need(size)
    refuse_no_room(args, max(args.scale_sizes))
    names = ([n for n in args.commands if n in RESTORE_SCALE_COMMANDS]
             + [n for n, _ in args.variants])
    rows = []
    for size in args.scale_sizes:
        for shape in args.shapes:
            refuse_no_room(args, size)
            t0 = time.monotonic()
            src = ensure_source(args, shape, size)
            gen = time.monotonic() - t0
            _, allocated = describe_source(src)
            b = RestoreBench(args, src, f'{shape}-{size:g}g')
            if not args.keep_sources:
                rmtree(src)
                os.unlink(src + '.shape.json')
            try:
                for name in names:
                    r = b.run_one(1, True, name)
                    r.update(size_gib=size, allocated=allocated, generate_s=gen,
                             shape_name=shape)
                    rows.append(r)
                    log('row: ' + restore_scale_row(r))
            finally:
                b.cleanup()
    lines = ['| shape | size GiB (allocated) | backup data GiB | command (cold) | wall s | '
             's per GiB of data | CPU s | peak RssAnon MiB |',
             '|---|---|---|---|---|---|---|---|']
    lines += [restore_scale_row(r) for r in rows]
    lines += ['', '| shape | size GiB | restore s/GiB | cp + sync s/GiB | read + write limit '
              's/GiB | restore ÷ cp | restore ÷ limit | restore peak RssAnon MiB |',
              '|---|---|---|---|---|---|---|---|']
    by = {(r['shape_name'], r['size_gib'], r['name']): r for r in rows}
    variants = [v for v in args.variants if any(r['name'] == v[0] for r in rows)]
    extra = ['', '| shape | size GiB | variant | s/GiB | ÷ synbackup restore | '
             'peak RssAnon MiB |', '|---|---|---|---|---|---|']
    for shape, size in dict.fromkeys((r['shape_name'], r['size_gib']) for r in rows):
        def per_gib(name):
            r = by.get((shape, size, name))
            return r['wall'] / (r['bytes'] / GIB) if r else float('nan')
        rs, cp = per_gib('synbackup-restore'), per_gib('cp')
        for name, _ in variants:
            vs = per_gib(name)
            extra.append(f'| {shape} | {size:g} | {name} | {vs:.2f} | {vs / rs:.2f} | '
                         f'{by[(shape, size, name)]["rss_anon_mib"]:.1f} |')
        floor = per_gib('read-direct') + per_gib('dd-direct')
        mem = by.get((shape, size, 'synbackup-restore'), {}).get('rss_anon_mib', float('nan'))
        lines.append(f'| {shape} | {size:g} | {rs:.2f} | {cp:.2f} | {floor:.2f} | '
                     f'{rs / cp:.2f} | {rs / floor:.2f} | {mem:.1f} |')
    if variants:
        lines += extra
    loads = [r['load'] for r in rows] or [float('nan')]
    lines.append('')
    lines.append(f'{len(rows)} measurements; load average (1 min) at the start of each: '
                 f'{min(loads):.2f}–{max(loads):.2f}; shapes generated in '
                 + ', '.join(sorted({f'{r["shape"]} {r["generate_s"]:.0f} s' for r in rows})))
    return '\n'.join(lines), rows


def restore_scale_row(r):
    gib = r['bytes'] / GIB
    return (f'| {r["shape_name"]} | {r["size_gib"]:g} ({r["allocated"] / GIB:.2f}) | '
            f'{gib:.2f} | {r["name"]} | {r["wall"]:.2f} | {r["wall"] / gib:.2f} | '
            f'{r["cpu"]:.2f} | {r["rss_anon_mib"]:.1f} |')


# ---------------------------------------------------------------------------------
# Restore from offsite: restic's restore, then our check and move (--restore-offsite)

RESTORE_OFFSITE_COMMANDS = ('synbackup-restore-offsite', 'restic-restore-cp', 'restic-restore')


class RestoreOffsiteBench(RestoreBench):
    """One shape's offsite restore rows: its backup uploaded once into a local restic
    repository (tagged as synbackup tags it), then `synbackup restore --offsite
    latest` into a new DIR against `restic restore` + `cp -a --sparse=always` + sync
    (restic's restore and the copy it needs to get to DIR) and `restic restore` +
    sync alone (the floor: restic's own work), warm and cold."""

    def __init__(self, args, src, shape):
        super().__init__(args, src, shape)
        self.top = os.path.join(args.workdir, 'restore-offsite')
        rmtree(self.top)
        for d in ('etc', 'state', 'lock', 'metrics', 'backups'):
            os.makedirs(os.path.join(self.top, d))
        self.repo = os.path.join(self.top, 'repo')
        pw = os.path.join(self.top, 'etc', 'c0.restic')
        with open(pw, 'w') as f:
            f.write('bench\n')
        os.chmod(pw, 0o600)
        self.env = dict(os.environ, RESTIC_PASSWORD_FILE=pw, RESTIC_REPOSITORY=self.repo,
                        RESTIC_CACHE_DIR=os.path.join(self.top, 'restic-cache'))
        with open(os.path.join(self.top, 'etc', 'c0.conf'), 'w') as f:
            f.write(f'SYNBACKUP_SERVICE_DIR={self.dir}\n'
                    f'SYNBACKUP_BACKUP_ROOT={os.path.join(self.top, "backups")}\n'
                    f'SYNBACKUP_OFFSITE_REPOSITORY={self.repo}\n'
                    f'SYNBACKUP_OFFSITE_PASSWORD_FILE={pw}\n')
        try:
            with open(os.path.join(self.backup, 'cell.guid')) as f:
                guid = f.read().strip()
        except OSError:
            guid = 'none'
        subprocess.run([args.restic, 'init', '-q'], env=self.env, check=True)
        subprocess.run([args.restic, 'backup', '-q', '--tag', 'synbackup', '--tag',
                        'instance=c0', '--tag', f'cell={guid}',
                        os.path.basename(self.backup)],
                       cwd=os.path.dirname(self.backup), env=self.env, check=True)
        log(f'{shape}: uploaded {self.backup} to {self.repo}')

    def commands(self):
        a = self.args
        staging = os.path.join(self.out, 'restic')
        name = os.path.basename(self.backup)
        restic = f'"{a.restic}" restore latest --target "{staging}"'
        flags = []
        for flag, d in (('--config-dir', 'etc'), ('--state-dir', 'state'),
                        ('--lock-dir', 'lock'), ('--metrics-dir', 'metrics')):
            flags += [flag, os.path.join(self.top, d)]
        cmds = {
            'synbackup-restore-offsite': [a.synbackup, *flags, 'restore', '--instance', 'c0',
                                          '--offsite', 'latest'],
            'restic-restore-cp': ['sh', '-c', f'{restic} && cp -a --sparse=always '
                                  f'"{staging}/{name}" "{self.dir}" && sync'],
            'restic-restore': ['sh', '-c', f'{restic} && sync'],
        }
        # restic's password, repository and cache (synbackup reads its config).
        env = ['env'] + [f'{k}={self.env[k]}' for k in
                         ('RESTIC_PASSWORD_FILE', 'RESTIC_REPOSITORY', 'RESTIC_CACHE_DIR')]
        return {k: env + v for k, v in cmds.items() if k in a.commands}

    def prepare(self, cold):
        super().prepare(cold)
        if not cold:
            warm([self.repo])

    def run(self):
        try:
            super().run()
        finally:
            rmtree(self.top)


def restore_offsite_table(results):
    """Per shape and cache: the medians of the offsite restore rows."""
    by = {}
    for r in results:
        by.setdefault((r['shape'], r['cache'], r['name']), []).append(r['wall'])
    lines = ['| shape | cache | GB of data | synbackup restore --offsite s | '
             'restic restore + cp -a + sync s | restic restore + sync s | '
             'synbackup ÷ restic + cp | synbackup ÷ restic alone |',
             '|---|---|---|---|---|---|---|---|']
    seen = []
    for r in results:
        k = (r['shape'], r['cache'])
        if k in seen:
            continue
        seen.append(k)
        s, c, o = (med(by.get(k + (n,), [float('nan')])) for n in RESTORE_OFFSITE_COMMANDS)
        lines.append(f'| {k[0]} | {k[1]} | {r["bytes"] / 1e9:.3f} | {s:.2f} | {c:.2f} | '
                     f'{o:.2f} | {s / c:.2f} | {s / o:.2f} |')
    loads = [r['load'] for r in results] or [float('nan')]
    lines.append('')
    lines.append(f'{len(results)} measurements; load average (1 min) at the start of each: '
                 f'{min(loads):.2f}–{max(loads):.2f}.')
    return '\n'.join(lines)


def restore_offsite_run(args):
    """--restore-offsite: every shape's offsite restore rows."""
    results = []
    for shape in args.shapes:
        src = ensure_source(args, shape)
        b = RestoreOffsiteBench(args, src, shape)
        b.run()
        results.extend(b.results)
    return restore_offsite_table(results), results


# ---------------------------------------------------------------------------------
# The live Cortex: freeze duration under write load

WRITER = r'''
import asyncio, sys, time
import synapse.telepath as s_telepath
async def main(d):
    async with await s_telepath.openurl('cell://' + d) as core:
        k = 0
        t0 = time.monotonic()
        while True:
            async for m in core.storm('for $i in $lib.range(20) { [inet:ipv4=($k + $i)] }',
                                      opts={'vars': {'k': k}}):
                if m[0] == 'err':
                    print(m, file=sys.stderr, flush=True)
            k += 20
            if k % 1000 == 0:
                print(k, time.monotonic() - t0, flush=True)
asyncio.run(main(sys.argv[1]))
'''

FORK = r'''
import asyncio, sys
import synapse.telepath as s_telepath
async def main(d, n):
    async with await s_telepath.openurl('cell://' + d) as core:
        for _ in range(n):
            async for m in core.storm('$lib.view.get().fork()'):
                if m[0] == 'err':
                    raise SystemExit(str(m))
asyncio.run(main(sys.argv[1], int(sys.argv[2])))
'''

WAIT = r'''
import asyncio, sys, time
import synapse.telepath as s_telepath
async def main(d, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            async with await s_telepath.openurl('cell://' + d) as core:
                await core.getCellInfo()
                return 0
        except Exception:
            await asyncio.sleep(0.25)
    return 1
sys.exit(asyncio.run(main(sys.argv[1], float(sys.argv[2]))))
'''


def cortex_freeze(args):
    py = os.path.join(args.venv, 'bin', 'python')
    cdir = os.path.join(args.workdir, 'cortex')
    rmtree(cdir)
    os.makedirs(cdir)
    logf = open(os.path.join(args.workdir, 'cortex.log'), 'wb')
    log('starting a Cortex for the freeze measurement')
    core = subprocess.Popen([py, '-m', 'synapse.servers.cortex', '--telepath',
                             'tcp://127.0.0.1:0', '--https', '0', cdir],
                            stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    writer = None
    out = []
    try:
        if subprocess.run([py, '-c', WAIT, cdir, '180']).returncode != 0:
            raise SystemExit('the Cortex did not answer within 180 s (see cortex.log)')
        if args.cortex_views:
            # Each forked view brings a layer: more environments, as in a real Cortex.
            subprocess.run([py, '-c', FORK, cdir, str(args.cortex_views)], check=True)
        writer = subprocess.Popen([py, '-c', WRITER, cdir], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(5)  # the writer is going
        for i in range(args.freeze_runs):
            dst = os.path.join(args.workdir, f'cortex-backup-{i}')
            rmtree(dst)
            load = loadavg()
            r = measure([args.synbackup, 'backup', cdir, dst, '--json'])
            if r['rc'] != 0:
                raise SystemExit(f'synbackup on the live Cortex failed: {r["stderr"]}')
            s = json.loads(r['stdout'])
            rec = {'freeze_ms': s['freeze_ms'], 'freeze_call_ms': s['freeze_call_ms'],
                   'wall': r['wall'], 'bytes': s['bytes_written'],
                   'rss_anon_mib': r['rss_anon_mib'],
                   'environments': s['environments'], 'load': load}
            log(f'live Cortex backup {i + 1}: frozen {s["freeze_ms"]:.0f} ms (freeze call '
                f'{s["freeze_call_ms"]:.0f} ms), {s["environments"]} environments, '
                f'wall {r["wall"]:.2f} s, RssAnon {r["rss_anon_mib"]:.1f} MiB, load {load:.2f}')
            out.append(rec)
            rmtree(dst)
            time.sleep(1)
    finally:
        for p in (writer, core):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGINT)
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
        logf.close()
        rmtree(cdir)
    return out


# ---------------------------------------------------------------------------------
# --mirror: the leader's write latency while a mirror is backed up

LATENCY = r'''
import asyncio, sys, time
import synapse.telepath as s_telepath
async def main(d, out, k):
    async with await s_telepath.openurl('cell://' + d) as core:
        with open(out, 'a', buffering=1) as f:
            while True:
                t0 = time.time()
                m0 = time.monotonic()
                async for m in core.storm('[inet:ipv4=$k]', opts={'vars': {'k': k}}):
                    if m[0] == 'err':
                        print(m, file=sys.stderr, flush=True)
                f.write(f'{t0:.4f} {(time.monotonic() - m0) * 1e3:.3f}\n')
                k += 1
asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
'''

PAUSED = r'''
import asyncio, sys, time
import synapse.telepath as s_telepath
async def main(d, out):
    async with await s_telepath.openurl('cell://' + d) as cell:
        with open(out, 'a', buffering=1) as f:
            while True:
                info = await cell.getCellInfo()
                f.write(f"{time.time():.3f} {int(info['cell']['paused'])}\n")
                await asyncio.sleep(0.02)
asyncio.run(main(sys.argv[1], sys.argv[2]))
'''

SEED = r'''
import asyncio, sys
import synapse.telepath as s_telepath
async def main(d, n):
    async with await s_telepath.openurl('cell://' + d) as core:
        for start in range(0, n, 1000):
            q = 'for $k in $lib.range($e, start=$s) { [inet:ipv4=$k :asn=$k +#seed] }'
            async for m in core.storm(q, opts={'vars': {'s': start, 'e': min(n, start + 1000)}}):
                if m[0] == 'err':
                    raise SystemExit(str(m))
asyncio.run(main(sys.argv[1], int(sys.argv[2])))
'''

INDEX = r'''
import asyncio, sys
import synapse.telepath as s_telepath
async def main(d):
    async with await s_telepath.openurl('cell://' + d) as cell:
        print((await cell.getCellInfo())['cell']['nexus']['indx'])
asyncio.run(main(sys.argv[1]))
'''


def start_cortex(py, d, logname, args, pin=()):
    logf = open(os.path.join(args.workdir, logname), 'wb')
    p = subprocess.Popen([*pin, py, '-m', 'synapse.servers.cortex', '--telepath',
                          'tcp://127.0.0.1:0', '--https', '0', d],
                         stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    if subprocess.run([py, '-c', WAIT, d, '180']).returncode != 0:
        raise SystemExit(f'the Cortex on {d} did not answer within 180 s (see {logname})')
    return p


def stop_procs(procs):
    for p in procs:
        if p is not None and p.poll() is None:
            os.killpg(p.pid, signal.SIGINT)
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def pct(xs, q):
    if not xs:
        return float('nan')
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def mirror_run(args):
    """The leader's write latency (one node per call, back to back) in phases of
    --mirror-seconds each, alternated --rounds times: nothing else running
    (baseline), `synbackup run` from the mirror (SYNBACKUP_SOURCE=mirror) over and
    over, and `synbackup backup` of the leader itself over and over (frozen each
    time), for comparison. A sampler asks the leader for `paused` every 20 ms."""
    py = os.path.join(args.venv, 'bin', 'python')
    w = os.path.join(args.workdir, 'mirror')
    rmtree(w)
    ldir, mdir = os.path.join(w, 'leader'), os.path.join(w, 'mirror')
    etc, backups = os.path.join(w, 'etc'), os.path.join(w, 'backups')
    if args.mirror_backup_root:
        # Elsewhere (another device, a tmpfs): the mirror's backups then share no
        # disk with the leader.
        backups = os.path.join(args.mirror_backup_root, 'synbackup-bench-mirror')
        rmtree(backups)
    for d in (ldir, etc, backups):
        os.makedirs(d)
    with open(os.path.join(ldir, 'cell.yaml'), 'w') as f:
        f.write('nexslog:en: true\n')
    procs = []
    # --mirror-split-cpus: the leader's host (the leader, its writer, the paused
    # sampler and a backup of the leader itself) on CPU 0, the mirror's host (the
    # mirror and synbackup's run from it) on CPU 1; the disk stays shared.
    on_leader, on_mirror = ((['taskset', '-c', '0'], ['taskset', '-c', '1'])
                            if args.mirror_split_cpus else ([], []))
    sb = [*on_mirror, args.synbackup, '--config-dir', etc, '--state-dir',
          os.path.join(w, 'state'), '--lock-dir', os.path.join(w, 'lock'),
          '--metrics-dir', os.path.join(w, 'metrics')]
    try:
        procs.append(start_cortex(py, ldir, 'mirror-leader.log', args, on_leader))
        log(f'seeding the leader with {args.mirror_nodes} nodes')
        subprocess.run([py, '-c', SEED, ldir, str(args.mirror_nodes)], check=True)
        seed = os.path.join(w, 'seed')
        subprocess.run([args.synbackup, 'backup', ldir, seed], check=True,
                       stderr=subprocess.DEVNULL)
        subprocess.run([args.synbackup, 'restore', seed, mdir], check=True,
                       stderr=subprocess.DEVNULL)
        rmtree(seed)
        with open(os.path.join(mdir, 'cell.yaml'), 'w') as f:
            f.write(f'nexslog:en: true\nmirror: cell://{ldir}\n')
        procs.append(start_cortex(py, mdir, 'mirror-mirror.log', args, on_mirror))
        with open(os.path.join(etc, 'bm.conf'), 'w') as f:
            f.write(f'SYNBACKUP_SERVICE_DIR={ldir}\nSYNBACKUP_BACKUP_ROOT={backups}\n'
                    f'SYNBACKUP_SOURCE=mirror\nSYNBACKUP_MIRRORS={mdir}\n'
                    'SYNBACKUP_KEEP_LAST=1\nSYNBACKUP_KEEP_DAILY=0\nSYNBACKUP_KEEP_WEEKLY=0\n'
                    'SYNBACKUP_KEEP_MONTHLY=0\nSYNBACKUP_METRICS=no\n')
        lat, paused = os.path.join(w, 'latency'), os.path.join(w, 'paused')
        errs = open(os.path.join(args.workdir, 'mirror-clients.log'), 'wb')
        procs.append(subprocess.Popen([*on_leader, py, '-c', LATENCY, ldir, lat, str(10 ** 8)],
                                      stderr=errs, start_new_session=True))
        procs.append(subprocess.Popen([*on_leader, py, '-c', PAUSED, ldir, paused],
                                      stderr=errs, start_new_session=True))
        time.sleep(5)  # the writer is going
        phases = []
        backups_made = {'mirror': [], 'leader': []}
        order = ['baseline', 'mirror', 'leader']
        for rnd in range(args.rounds):
            for name in (order if rnd % 2 == 0 else order[::-1]):
                load = loadavg()
                t0 = time.time()
                while time.time() - t0 < args.mirror_seconds:
                    if name == 'baseline':
                        time.sleep(0.2)
                        continue
                    if name == 'mirror':
                        at_start = int(subprocess.run([*on_mirror, py, '-c', INDEX, ldir],
                                                      check=True,
                                                      capture_output=True).stdout)
                        r = measure(sb + ['run', 'bm'])
                        if r['rc'] != 0:
                            raise SystemExit(f'the mirror run failed: {r["stderr"]}')
                        newest = sorted(os.listdir(backups))[-1]
                        with open(os.path.join(backups, newest, 'synbackup-manifest.json')) as f:
                            fm = json.load(f)['from_mirror']
                        backups_made[name].append({'wall': r['wall'], 'at_start': at_start,
                                                   'leader_index': fm['leader_nexus_index'],
                                                   'index': fm['nexus_index'],
                                                   'waited_ms': fm['waited_ms']})
                    else:
                        dst = os.path.join(w, 'leader-backup')
                        rmtree(dst)
                        r = measure([*on_leader, args.synbackup, 'backup', ldir, dst,
                                     '--json'])
                        if r['rc'] != 0:
                            raise SystemExit(f'the leader backup failed: {r["stderr"]}')
                        s = json.loads(r['stdout'])
                        backups_made[name].append({'wall': r['wall'],
                                                   'freeze_ms': s['freeze_ms']})
                        rmtree(dst)
                phases.append((name, t0, time.time(), load))
                log(f'round {rnd + 1}: {name} phase, {time.time() - t0:.1f} s, load {load:.2f}')
        time.sleep(1)
    finally:
        stop_procs(procs[::-1])
    edits = []
    with open(lat) as f:
        for line in f:
            t, ms = line.split()
            edits.append((float(t), float(ms)))
    samples = []
    with open(paused) as f:
        for line in f:
            t, p = line.split()
            samples.append((float(t), int(p)))
    rows = []
    for name in order:
        win = [(a, b) for n, a, b, _ in phases if n == name]
        ms = [m for t, m in edits if any(a <= t < b for a, b in win)]
        ps = [p for t, p in samples if any(a <= t < b for a, b in win)]
        rows.append({'phase': name, 'edits': len(ms), 'p50': pct(ms, 0.5), 'p99': pct(ms, 0.99),
                     'max': max(ms) if ms else float('nan'),
                     'paused_samples': sum(ps), 'samples': len(ps),
                     'backups': len(backups_made.get(name, [])),
                     'load': med([ld for n, _, _, ld in phases if n == name])})
    base = rows[0]['p99']
    lines = ['| phase | edits | p50 ms | p99 ms | p99 vs baseline | max ms | leader paused '
             '(samples) | backups | load |', '|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f"| {r['phase']} | {r['edits']} | {r['p50']:.1f} | {r['p99']:.1f} | "
                     f"{(r['p99'] / base - 1) * 100:+.0f} % | {r['max']:.0f} | "
                     f"{r['paused_samples']} of {r['samples']} | {r['backups']} | "
                     f"{r['load']:.2f} |")
    mb = backups_made['mirror']
    if mb:
        lines.append('')
        lines.append(f"mirror runs: median wall {med([b['wall'] for b in mb]):.2f} s, "
                     f"waited for the mirror median {med([b['waited_ms'] for b in mb]):.0f} ms; "
                     f"index at the snapshots minus the leader's at the start: "
                     f"{min(b['index'] - b['leader_index'] for b in mb)} to "
                     f"{max(b['index'] - b['leader_index'] for b in mb)}; every "
                     f"leader_nexus_index >= the index read just before the run: "
                     f"{all(b['leader_index'] >= b['at_start'] for b in mb)}")
    lb = backups_made['leader']
    if lb:
        lines.append(f"leader backups: median wall {med([b['wall'] for b in lb]):.2f} s, "
                     f"frozen median {med([b['freeze_ms'] for b in lb]):.0f} ms, "
                     f"max {max(b['freeze_ms'] for b in lb):.0f} ms")
    return '\n'.join(lines), rows


# ---------------------------------------------------------------------------------
# --seed-mirror: a new mirror seeded from a backup, against Synapse's own clone

RELAY = r"""
import asyncio, os, sys
async def main(listen, upstream, out):
    total = [0]
    async def pipe(r, w, count):
        try:
            while True:
                b = await r.read(1 << 16)
                if not b:
                    break
                if count:
                    total[0] += len(b)
                w.write(b)
                await w.drain()
        except Exception:
            pass
        finally:
            try:
                w.close()
            except Exception:
                pass
    async def handle(cr, cw):
        ur, uw = await asyncio.open_unix_connection(upstream)
        await asyncio.gather(pipe(cr, uw, False), pipe(ur, cw, True))
    await asyncio.start_unix_server(handle, path=listen)
    while True:
        with open(out + '.tmp', 'w') as f:
            f.write(str(total[0]))
        os.replace(out + '.tmp', out)
        await asyncio.sleep(0.05)
try:
    asyncio.run(main(*sys.argv[1:4]))
except KeyboardInterrupt:
    pass
"""

AFTER = r"""
import asyncio, sys
import synapse.telepath as s_telepath
async def main(d, s, e):
    async with await s_telepath.openurl('cell://' + d) as core:
        q = 'for $k in $lib.range($e, start=$s) { [inet:ipv4=$k :asn=$k +#after] }'
        async for m in core.storm(q, opts={'vars': {'s': s, 'e': e}}):
            if m[0] == 'err':
                raise SystemExit(str(m))
asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""

CLONE = r"""
import asyncio, sys, types
import synapse.telepath as s_telepath
import synapse.lib.cell as s_cell
async def main(url, d):
    async with await s_telepath.openurl(url) as proxy:
        # Synapse's own clone, as a new mirror's boot runs it (_bootCellMirror).
        await s_cell.Cell._initCloneCell(types.SimpleNamespace(dirn=d), proxy)
asyncio.run(main(sys.argv[1], sys.argv[2]))
"""

CAUGHT_UP = r"""
import asyncio, sys, time
import synapse.telepath as s_telepath
async def main(d, want, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            async with await s_telepath.openurl('cell://' + d) as cell:
                while time.monotonic() < deadline:
                    info = (await cell.getCellInfo())['cell']
                    if info['nexus']['indx'] >= want and not info['active']:
                        return 0
                    await asyncio.sleep(0.1)
        except Exception:
            await asyncio.sleep(0.1)
    return 1
sys.exit(asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))))
"""

BACKUP_INFO = r"""
import asyncio, json, sys
import synapse.telepath as s_telepath
async def main(d):
    async with await s_telepath.openurl('cell://' + d) as cell:
        print(json.dumps(await cell.getBackupInfo()))
asyncio.run(main(sys.argv[1]))
"""


def proc_io(pid, key):
    with open(f'/proc/{pid}/io') as f:
        for line in f:
            k, v = line.split(':')
            if k == key:
                return int(v)
    return 0


def seed_run(args):
    """A new mirror of a leader with --seed-mirror-nodes nodes and --seed-mirror-after writes
    made after its nightly backup: `synbackup seed-mirror` from that backup, then
    the Cortex started on it, against Synapse's own clone (`_initCloneCell`: the
    leader runs a new backup and streams it as a tar.gz), then the Cortex started
    on that; each until the mirror has the leader's index at the start. The mirror
    reaches the leader through a byte-counting relay in front of its socket (the
    bytes the leader sends); the leader's getBackupInfo says whether it ran a
    backup; /proc/LEADER/io its disk writes (its process tree)."""
    py = os.path.join(args.venv, 'bin', 'python')
    w = os.path.join(args.workdir, 'seed')
    rmtree(w)
    ldir, etc, backups = (os.path.join(w, n) for n in ('leader', 'etc', 'backups'))
    relay = os.path.join(w, 'relay')
    for d in (ldir, etc, backups, relay):
        os.makedirs(d)
    with open(os.path.join(ldir, 'cell.yaml'), 'w') as f:
        f.write('nexslog:en: true\n')
    sb = [args.synbackup, '--config-dir', etc, '--state-dir', os.path.join(w, 'state'),
          '--lock-dir', os.path.join(w, 'lock'), '--metrics-dir', os.path.join(w, 'metrics')]
    with open(os.path.join(etc, 'bs.conf'), 'w') as f:
        f.write(f'SYNBACKUP_SERVICE_DIR={ldir}\nSYNBACKUP_BACKUP_ROOT={backups}\n'
                'SYNBACKUP_METRICS=no\n')
    procs = []
    rows = []
    try:
        leader = start_cortex(py, ldir, 'seed-leader.log', args)
        procs.append(leader)
        log(f'seeding the leader with {args.seed_nodes} nodes')
        subprocess.run([py, '-c', SEED, ldir, str(args.seed_nodes)], check=True)
        r = measure(sb + ['run', 'bs'])
        if r['rc'] != 0:
            raise SystemExit(f'the nightly run failed: {r["stderr"]}')
        backup = os.path.join(backups, sorted(n for n in os.listdir(backups)
                                              if n.startswith('bs_'))[-1])
        with open(os.path.join(backup, 'synbackup-manifest.json')) as f:
            m = json.load(f)
        backup_bytes = sum(x['size'] for x in m['files'])
        log(f'{args.seed_after} writes after the backup')
        subprocess.run([py, '-c', AFTER, ldir, str(args.seed_nodes),
                        str(args.seed_nodes + args.seed_after)], check=True)
        counter = os.path.join(w, 'relayed')
        procs.append(subprocess.Popen([py, '-c', RELAY, os.path.join(relay, 'sock'),
                                       os.path.join(ldir, 'sock'), counter],
                                      start_new_session=True))
        wait_for_file = time.time() + 10
        while not os.path.exists(counter) and time.time() < wait_for_file:
            time.sleep(0.05)
        upstream = f'cell://{relay}'
        for rnd in range(args.rounds):
            order = ['seed-mirror', 'synapse-clone']
            for name in (order if rnd % 2 == 0 else order[::-1]):
                mdir = os.path.join(w, f'mirror-{name}')
                rmtree(mdir)
                load = loadavg()
                at_start = int(subprocess.run([py, '-c', INDEX, ldir], check=True,
                                              capture_output=True).stdout)
                info0 = json.loads(subprocess.run([py, '-c', BACKUP_INFO, ldir], check=True,
                                                  capture_output=True).stdout)
                with open(counter) as f:
                    sent0 = int(f.read() or 0)
                disk0 = proc_io(leader.pid, 'write_bytes')
                t0 = time.monotonic()
                if name == 'seed-mirror':
                    r = measure(sb + ['seed-mirror', '--instance', 'bs', '--upstream', upstream,
                                      mdir])
                    if r['rc'] != 0:
                        raise SystemExit(f'seed-mirror failed: {r["stderr"]}')
                else:
                    r = measure([py, '-c', CLONE, upstream, mdir])
                    if r['rc'] != 0:
                        raise SystemExit(f"Synapse's clone failed: {r['stderr']}")
                    with open(os.path.join(mdir, 'cell.yaml'), 'a') as f:
                        f.write(f'\nmirror: {upstream}\n')
                made = time.monotonic() - t0
                mirror = start_cortex(py, mdir, f'seed-{name}.log', args)
                ok = subprocess.run([py, '-c', CAUGHT_UP, mdir, str(at_start), '600']).returncode
                ready = time.monotonic() - t0
                stop_procs([mirror])
                if ok != 0:
                    raise SystemExit(f'{name}: the mirror did not catch up (see seed-{name}.log)')
                with open(counter) as f:
                    sent = int(f.read() or 0) - sent0
                info1 = json.loads(subprocess.run([py, '-c', BACKUP_INFO, ldir], check=True,
                                                  capture_output=True).stdout)
                rows.append({'name': name, 'round': rnd + 1, 'made_s': made, 'ready_s': ready,
                             'sent': sent, 'leader_disk': proc_io(leader.pid, 'write_bytes')
                             - disk0, 'backup_ran': info1['laststart'] != info0['laststart'],
                             'backup_size': info1.get('lastsize') if info1['laststart']
                             != info0['laststart'] else None,
                             'entries': at_start - m['cell']['nexus_index'], 'load': load})
                log(f"round {rnd + 1}: {name}: ready in {ready:.1f} s, leader sent "
                    f"{sent / MIB:.1f} MiB, load {load:.2f}")
                rmtree(mdir)
    finally:
        stop_procs(procs[::-1])
    lines = [f'leader: {args.seed_nodes} nodes, backup {backup_bytes / MIB:.1f} MiB '
             f"(nexus index {m['cell']['nexus_index']}), then {args.seed_after} nodes written "
             'after it', '',
             '| way | round | NEWDIR made s | ready s | leader sent MiB | leader disk writes MiB '
             '| leader ran a backup | entries to apply | load |',
             '|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f"| {r['name']} | {r['round']} | {r['made_s']:.1f} | {r['ready_s']:.1f} | "
                     f"{r['sent'] / MIB:.2f} | {r['leader_disk'] / MIB:.1f} | "
                     f"{'yes' if r['backup_ran'] else 'no'} | {r['entries']} | "
                     f"{r['load']:.2f} |")
    return '\n'.join(lines), rows


# --pitr: the nexus archiver (point-in-time recovery) under a steady writer

PITR_WRITER = r'''
import asyncio, sys, time
import synapse.telepath as s_telepath
async def main(d, out, k):
    async with await s_telepath.openurl('cell://' + d) as core:
        with open(out, 'a', buffering=1) as f:
            while True:
                m0 = time.monotonic()
                async for m in core.storm('[inet:ipv4=$k]', opts={'vars': {'k': k}}):
                    if m[0] == 'err':
                        raise SystemExit(str(m))
                f.write(f'{k} {time.time():.6f} {(time.monotonic() - m0) * 1e3:.3f}\n')
                k += 1
asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
'''

# The cell's own log, each entry as Synapse encodes it: "OFFSET HEX" per line.
PITR_CELL_LOG = r'''
import asyncio, sys
import synapse.telepath as s_telepath
import synapse.lib.msgpack as s_msgpack
async def main(d):
    async with await s_telepath.openurl('cell://' + d) as cell:
        async for offs, item in cell.getNexusChanges(0, wait=False):
            sys.stdout.write(f'{offs} {s_msgpack.en(item).hex()}\n')
asyncio.run(main(sys.argv[1]))
'''


class ArchivePoller:
    """Reads the nexus archive as the archiver writes it, every `every` seconds, in
    a thread: when each offset first appears in a segment (the archiver writes a
    batch, then fsyncs it before it reads on, so this is the moment it becomes
    durable, less the fsync), its record's bytes, and which writer value (the
    `inet:ipv4` a node-add entry adds) it carries."""

    def __init__(self, adir, every=0.02):
        import threading
        import synapse.lib.msgpack as s_msgpack
        self.s_msgpack = s_msgpack
        self.adir, self.every = adir, every
        self.seen = {}      # first offset of a segment -> (bytes consumed, unpacker)
        self.appeared = {}  # offset -> wall time first seen
        self.received = {}  # offset -> received_us
        self.entry = {}     # offset -> ENTRY bytes (re-encoded)
        self.by_k = {}      # writer value -> offset
        self.contiguous = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def next_offset(self):
        """One past the offsets seen from 0 with no gap."""
        while self.contiguous in self.appeared:
            self.contiguous += 1
        return self.contiguous

    def loop(self):
        while not self.stop.is_set():
            self.poll()
            time.sleep(self.every)

    def poll(self):
        now = time.time()
        try:
            names = os.listdir(self.adir)
        except FileNotFoundError:
            return
        for name in sorted(names):
            if not name.endswith('.seg'):
                continue
            first = int(name[5:21] if name.startswith('open-') else name[:16], 16)
            done, unpk = self.seen.get(first, (0, None))
            if unpk is None:
                unpk = self.s_msgpack.Unpk()
            try:
                with open(os.path.join(self.adir, name), 'rb') as f:
                    f.seek(done)
                    data = f.read()
            except FileNotFoundError:
                continue  # renamed as it closed: read under its new name next time
            self.seen[first] = (done + len(data), unpk)
            for _, rec in unpk.feed(data):
                offs, rus, item = rec
                if offs in self.appeared:
                    continue
                self.appeared[offs] = now
                self.received[offs] = rus
                self.entry[offs] = self.s_msgpack.en(item)
                k = self.writer_value(item)
                if k is not None:
                    self.by_k[k] = offs

    @staticmethod
    def writer_value(item):
        """The address a 2.x node-add entry adds (the writer's k), else None."""
        try:
            if item[1] != 'edits':
                return None
            for _buid, form, edits in item[2][0]:
                if form == 'inet:ipv4' and edits and edits[0][0] == 0:
                    return edits[0][1][0]
        except (IndexError, TypeError, ValueError):
            return None
        return None

    def close(self):
        self.stop.set()
        self.thread.join()
        self.poll()


def pitr_run(args):
    """--pitr: a real 2.256.0 Cortex with its nexus log, a writer making one node per
    call back to back for the whole run, and `synbackup nexus-archive` following it
    into the archive. Phases of --pitr-seconds alternate with and without the
    archiver (the order flips every round, so the shared machine's load hits both);
    the archive is polled to time each write from the writer's return to its entry
    being in the archive. Then the cell is killed (SIGKILL) under the writer and
    started again; then `restore --to` the newest archived entry, the base restore
    alone and a full restore of a backup taken at that point."""
    py = os.path.join(args.venv, 'bin', 'python')
    w = os.path.join(args.workdir, 'pitr')
    rmtree(w)
    cdir = os.path.join(w, 'cortex')
    etc, backups, full = (os.path.join(w, n) for n in ('etc', 'backups', 'full'))
    for d in (cdir, etc, backups, full):
        os.makedirs(d)
    with open(os.path.join(cdir, 'cell.yaml'), 'w') as f:
        f.write('nexslog:en: true\n')
    sb = [args.synbackup, '--config-dir', etc, '--state-dir', os.path.join(w, 'state'),
          '--lock-dir', os.path.join(w, 'lock'), '--metrics-dir', os.path.join(w, 'metrics')]
    common = (f'SYNBACKUP_SERVICE_DIR={cdir}\nSYNBACKUP_DRILL_PYTHON={py}\n'
              'SYNBACKUP_KEEP_LAST=5\nSYNBACKUP_KEEP_DAILY=0\nSYNBACKUP_KEEP_WEEKLY=0\n'
              'SYNBACKUP_KEEP_MONTHLY=0\nSYNBACKUP_METRICS=no\n')
    # The instance: its base backup and its archive (the full backup taken at the
    # end goes beside them, by `synbackup backup`: one directory, one instance).
    with open(os.path.join(etc, 'bp.conf'), 'w') as f:
        f.write(common + f'SYNBACKUP_BACKUP_ROOT={backups}\n')
    adir = os.path.join(backups, 'nexus-archive')
    alog = open(os.path.join(args.workdir, 'pitr-archiver.log'), 'ab')
    errs = open(os.path.join(args.workdir, 'pitr-writer.log'), 'ab')
    lat = os.path.join(w, 'latency')
    core = writer = archiver = None

    def index():
        return int(subprocess.run([py, '-c', INDEX, cdir], check=True,
                                  capture_output=True).stdout)

    def start_archiver():
        return subprocess.Popen(sb + ['nexus-archive', 'bp'], stdout=subprocess.DEVNULL,
                                stderr=alog, start_new_session=True)

    def stop_archiver(a):
        os.killpg(a.pid, signal.SIGTERM)
        if a.wait(60) != 0:
            raise SystemExit(f'the archiver exited {a.returncode} on SIGTERM')

    def wait_archived(poller, want, secs=300):
        deadline = time.time() + secs
        while poller.next_offset() < want:
            if time.time() > deadline:
                raise SystemExit(f'the archive did not reach {want} in {secs} s '
                                 f'(at {poller.next_offset()})')
            time.sleep(0.05)

    def writes():
        out = []
        with open(lat) as f:
            for line in f:
                k, t, ms = line.split()
                out.append((int(k), float(t), float(ms)))
        return out

    poller = ArchivePoller(adir)
    phases = []
    try:
        core = start_cortex(py, cdir, 'pitr-cortex.log', args)
        subprocess.run([py, '-c', SEED, cdir, str(args.pitr_seed)], check=True)
        r = measure(sb + ['run', 'bp'])
        if r['rc'] != 0:
            raise SystemExit(f'the base backup failed: {r["stderr"]}')
        base_index = index()
        archiver = start_archiver()
        wait_archived(poller, base_index)
        stop_archiver(archiver)
        archiver = None
        writer = subprocess.Popen([py, '-c', PITR_WRITER, cdir, lat, str(10 ** 8)],
                                  stderr=errs, start_new_session=True)
        time.sleep(3)  # the writer is going
        order = ['archiver', 'baseline']
        for rnd in range(args.rounds):
            for name in (order if rnd % 2 == 0 else order[::-1]):
                if name == 'archiver':
                    archiver = start_archiver()
                    wait_archived(poller, index())  # the backlog of the last phase
                load = loadavg()
                i0, t0 = index(), time.time()
                time.sleep(args.pitr_seconds)
                i1, t1 = index(), time.time()
                if name == 'archiver':
                    wait_archived(poller, i1)
                    stop_archiver(archiver)
                    archiver = None
                phases.append({'phase': name, 't0': t0, 't1': t1, 'entries': i1 - i0,
                               'load': load})
                log(f'round {rnd + 1}: {name} phase, {t1 - t0:.1f} s, {i1 - i0} entries, '
                    f'load {load:.2f}')
        # The cell killed under the writer, the archiver running.
        archiver = start_archiver()
        wait_archived(poller, index())
        time.sleep(3)
        t_kill = time.time()
        os.killpg(core.pid, signal.SIGKILL)
        core.wait()
        writer.wait(60)
        time.sleep(1)
        held_at_kill = poller.next_offset()
        acked = writes()
        log(f'killed the cell: the writer had {len(acked)} writes acknowledged, the archive '
            f'holds offsets up to {held_at_kill - 1}')
        core = start_cortex(py, cdir, 'pitr-cortex-2.log', args)
        end = index()
        if end >= held_at_kill:
            wait_archived(poller, end)
            stop_archiver(archiver)
            archiver_said = f'caught up to {end} and stopped cleanly'
        else:
            # The cell came back behind its archive (it lost its last commits):
            # the archiver must refuse to go on (its offsets would be reused).
            try:
                rc = archiver.wait(60)
            except subprocess.TimeoutExpired:
                stop_archiver(archiver)
                rc = 'still running (killed by the bench)'
            archiver_said = f'exited {rc}'
        archiver = None
        cell_log = {}
        out = subprocess.run([py, '-c', PITR_CELL_LOG, cdir], check=True,
                             capture_output=True, text=True).stdout
        for line in out.splitlines():
            o, h = line.split()
            cell_log[int(o)] = bytes.fromhex(h)
        # The full backup at this point, for the nightly restore's row.
        target = poller.next_offset()  # the newest archived entry, before the kill
        r = measure(sb + ['backup', cdir, os.path.join(full, 'at-end')])
        if r['rc'] != 0:
            raise SystemExit(f'the full backup failed: {r["stderr"]}')
    finally:
        poller.close()
        for p in (writer, archiver):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(60)
        stop_procs([core])
    # Restores (the cell stopped): to the newest archived entry, the base alone, the
    # full backup of that point.
    restores = {}
    base_name = sorted(n for n in os.listdir(backups) if n.startswith('bp_'))[0]
    for what, cmd in (('restore --to', ['restore', '--instance', 'bp', '--to', str(target)]),
                      ('base backup alone', ['restore', '--instance', 'bp', base_name]),
                      ('full backup of that point', ['restore', os.path.join(full, 'at-end'),
                                                     cdir])):
        load = loadavg()
        r = measure(sb + cmd)
        if r['rc'] != 0:
            raise SystemExit(f'{what} failed: {r["stderr"]}')
        replay = None
        if '--to' in cmd:
            with open(os.path.join(w, 'state', 'bp.restore.json')) as f:
                replay = (json.load(f).get('details') or {}).get('before_swap')
        restores[what] = {'wall': r['wall'], 'cpu': r['cpu'], 'load': load,
                          'replay': replay}
        log(f'{what}: {r["wall"]:.1f} s')

    # Recovery point: per write made during an archiver phase, its return to its
    # entry appearing in the archive.
    ws = writes()
    lags, rlags = [], []
    for k, t, _ in ws:
        if not any(p['phase'] == 'archiver' and p['t0'] <= t < p['t1'] for p in phases):
            continue
        o = poller.by_k.get(k)
        if o is None:
            raise SystemExit(f'write {k} (returned {t:.3f}) is not in the archive')
        lags.append((poller.appeared[o] - t) * 1e3)
        rlags.append(poller.received[o] / 1e3 - t * 1e3)
    lines = ['| phase | writes | p50 ms | p99 ms | p99 vs baseline | max ms | entries/s '
             '| load |', '|---|---|---|---|---|---|---|---|']
    rows = []
    for name in ('baseline', 'archiver'):
        win = [(p['t0'], p['t1']) for p in phases if p['phase'] == name]
        ms = [m for _, t, m in ws if any(a <= t < b for a, b in win)]
        secs = sum(b - a for a, b in win)
        ents = sum(p['entries'] for p in phases if p['phase'] == name)
        rows.append({'phase': name, 'writes': len(ms), 'p50': pct(ms, 0.5),
                     'p99': pct(ms, 0.99), 'max': max(ms) if ms else float('nan'),
                     'rate': ents / secs if secs else float('nan'),
                     'load': med([p['load'] for p in phases if p['phase'] == name])})
    base = rows[0]['p99']
    for r in rows:
        lines.append(f"| {r['phase']} | {r['writes']} | {r['p50']:.1f} | {r['p99']:.1f} | "
                     f"{(r['p99'] / base - 1) * 100:+.1f} % | {r['max']:.0f} | "
                     f"{r['rate']:.0f} | {r['load']:.2f} |")
    lines += ['', f'recovery point ({len(lags)} writes of the archiver phases): from the '
              f"writer's return to the entry in the archive p50 {pct(lags, 0.5):.0f} ms, "
              f'p99 {pct(lags, 0.99):.0f} ms, max {max(lags):.0f} ms (polled every 20 ms; '
              f'received by the archiver, before its write and fsync: p50 '
              f'{pct(rlags, 0.5):.0f} ms, p99 {pct(rlags, 0.99):.0f} ms from the return)']
    # The kill: every write the cell acknowledged is in the archive, and what the
    # archive and the restarted cell both have is the same, byte for byte.
    acked_offs = [poller.by_k.get(k) for k, _, _ in acked]
    missing_at_kill = sum(1 for o in acked_offs if o is None or o >= held_at_kill)
    common = min(end, held_at_kill)
    same = (sorted(cell_log) == list(range(end)) and
            all(cell_log[o] == poller.entry.get(o) for o in range(common)))
    lost_by_cell = [o for o in acked_offs if o is not None and o >= end]
    lines += ['', f'cell killed (SIGKILL) under the writer: {len(acked)} writes acknowledged '
              f'to it; the archive held offsets 0-{held_at_kill - 1}; acknowledged writes not '
              f'in the archive: {missing_at_kill}. The cell started again at index {end}: '
              f'its log and the archive agree byte for byte on offsets 0-{common - 1}: {same}; '
              f'archived entries the restarted cell no longer has: '
              f'{max(0, held_at_kill - end)} ({len(lost_by_cell)} of them writes it had '
              f'acknowledged); the archiver {archiver_said}']
    to = restores['restore --to']
    rep = to['replay'] or {}
    applied = rep.get('applied', 0)
    boot = rep.get('boot_seconds', 0.0)
    secs = rep.get('seconds', float('nan')) - boot
    lines += ['', '| restore | wall s | CPU s | entries applied | replay s (boot) | '
              'entries/s applied | load |', '|---|---|---|---|---|---|---|']
    for what, r in restores.items():
        rp = r['replay'] or {}
        lines.append(f"| {what} | {r['wall']:.1f} | {r['cpu']:.1f} | "
                     f"{rp.get('applied', '')} | "
                     f"{'' if not rp else format(rp['seconds'], '.1f')}"
                     f"{'' if not rp else ' (' + format(boot, '.1f') + ')'} | "
                     f"{'' if not rp else format(applied / secs, '.0f')} | "
                     f"{r['load']:.2f} |")
    lines += ['', f"applied at {applied / secs:.0f} entries/s (after the replay's boot) "
              f"against the cell's own {rows[0]['rate']:.0f} entries/s under the writer "
              f"(without the archiver; {rows[1]['rate']:.0f} with it); base index "
              f"{base_index}, target {target} (the newest archived entry)"]
    return '\n'.join(lines), {'phases': rows, 'lag_ms': lags, 'restores': restores}


# ---------------------------------------------------------------------------------
# Report


def med(xs):
    return statistics.median(xs) if xs else float('nan')


def shape_table(results):
    """One shape's rows: medians with min-max, CPU, RssAnon, bytes, and the ratios to
    the Python tool (of the row's own Synapse line: python-tool-3 for the 3.7.0 rows),
    the write limit (dd-direct), and cold also to read + write limit."""
    lines = []
    by = {}
    names = []
    for r in results:
        by.setdefault((r['name'], r['cache']), []).append(r)
        if r['name'] not in names:
            names.append(r['name'])
    lines.append('| command | cache | wall median (min–max) s | CPU median s | peak RssAnon MiB'
                 ' | GB | ÷ its line\'s python-tool | ÷ write limit | ÷ read+write limit |')
    lines.append('|---|---|---|---|---|---|---|---|---|')
    ratios = {}
    read = med([r['wall'] for r in by.get(('read-direct', 'cold'), [])])
    for cache in ('warm', 'cold'):
        wl = med([r['wall'] for r in by.get(('dd-direct', cache), [])])
        for n in names:
            rs = by.get((n, cache))
            if not rs:
                continue
            anchor = 'python-tool-3' if n in SYN3_COMMANDS else 'python-tool'
            py = med([r['wall'] for r in by.get((anchor, cache), [])])
            w = [r['wall'] for r in rs]
            m = med(w)
            rp = m / py if py == py else float('nan')
            rw = m / wl if wl == wl else float('nan')
            rrw = m / (read + wl) if cache == 'cold' and read == read and wl == wl else None
            ratios[(n, cache)] = (rp, rw, rrw)
            gb = rs[0].get('bytes')
            lines.append(f'| {n} | {cache} | {m:.2f} ({min(w):.2f}–{max(w):.2f}) | '
                         f'{med([r["cpu"] for r in rs]):.2f} | '
                         f'{max(r["rss_anon_mib"] for r in rs):.1f} | '
                         f'{"" if gb is None else f"{gb / 1e9:.3f}"} | {rp:.2f} | {rw:.2f} | '
                         f'{"" if rrw is None else f"{rrw:.2f}"} |')
    return lines, ratios


def targets(shape, ratios):
    """Issue 15's targets for synbackup on one shape, as a line of the report."""
    out = []
    w = ratios.get(('synbackup', 'warm'))
    c = ratios.get(('synbackup', 'cold'))
    if w:
        out.append(f'warm {w[0]:.2f}× python-tool (≤ 1.0: {"met" if w[0] <= 1.0 else "MISSED"}),'
                   f' {w[1]:.2f}× write limit (≤ 1.5: {"met" if w[1] <= 1.5 else "MISSED"})')
    if c:
        out.append(f'cold {c[0]:.2f}× python-tool (≤ 0.6: {"met" if c[0] <= 0.6 else "MISSED"})'
                   + ('' if c[2] is None else f', {c[2]:.2f}× read+write limit (≤ 1.3: '
                      f'{"met" if c[2] <= 1.3 else "MISSED"})'))
    return f'{shape}: ' + '; '.join(out) if out else ''


def summarize(results, freeze, meta):
    lines = []
    all_ratios = {}
    shapes = []
    for r in results:
        if r.get('shape', 'mixed') not in shapes:
            shapes.append(r.get('shape', 'mixed'))
    for shape in shapes:
        rs = [r for r in results if r.get('shape', 'mixed') == shape]
        info = meta.get('shapes', {}).get(shape, {})
        lines.append(f'### {shape}')
        lines.append('')
        if info:
            lines.append(f'{info["environments"]} environments, {info["allocated"] / GIB:.2f} GiB '
                         f'allocated, {info["live"] / 1e9:.3f} GB of live pages.')
            lines.append('')
        table, ratios = shape_table(rs)
        lines.extend(table)
        all_ratios[shape] = ratios
        lines.append('')
    for shape in shapes:
        t = targets(shape, all_ratios[shape])
        if t:
            lines.append(f'- {t}')
    peers = syn3_table(results, shapes)
    if peers:
        lines.append('')
        lines.extend(peers)
    loads = [r['load'] for r in results] or [float('nan')]
    lines.append('')
    lines.append(f'{len(results)} measurements, {meta["rounds"]} rounds; load average (1 min) '
                 f'at the start of each: {min(loads):.2f}–{max(loads):.2f}.')
    if freeze:
        fm = [f['freeze_ms'] for f in freeze]
        fc = [f['freeze_call_ms'] for f in freeze]
        lines.append('')
        lines.append(f'Live Cortex under write load, {len(freeze)} backups of '
                     f'{freeze[0]["environments"]} environments: frozen median {med(fm):.0f} ms '
                     f'({min(fm):.0f}–{max(fm):.0f}), of which the service\'s own freeze call '
                     f'median {med(fc):.0f} ms ({min(fc):.0f}–{max(fc):.0f}); starting the '
                     f'snapshots took median {med([a - b for a, b in zip(fm, fc)]):.0f} ms; '
                     f'peak RssAnon {max(f["rss_anon_mib"] for f in freeze):.1f} MiB.')
    return '\n'.join(lines), all_ratios


def syn3_table(results, shapes):
    """Per shape and cache: synbackup against each line's own tool, side by side (the
    2.256 source, and the same data inside a running 3.7.0 Cortex); empty without
    3.7.0 rows."""
    walls = {}
    for r in results:
        walls.setdefault((r.get('shape', 'mixed'), r['name'], r['cache']), []).append(r['wall'])
    if not any(k[1] in SYN3_COMMANDS for k in walls):
        return []

    def ratio(shape, cache, a, b):
        x, y = walls.get((shape, a, cache)), walls.get((shape, b, cache))
        return f'{med(x) / med(y):.2f}' if x and y else ''

    def wall(shape, cache, name):
        x = walls.get((shape, name, cache))
        return f'{med(x):.2f}' if x else ''

    lines = ['### Synapse 3.7.0\'s own tools as peers',
             '',
             '| shape | cache | synbackup ÷ Python tool 2.256 | synbackup-3 ÷ Python tool 3.7.0 '
             '| synbackup-3 ÷ stream 3.7.0 | synbackup-3 s | Python tool 3.7.0 s | stream 3.7.0 s |',
             '|---|---|---|---|---|---|---|---|']
    for shape in shapes:
        for cache in ('warm', 'cold'):
            if not walls.get((shape, 'synbackup-3', cache)):
                continue
            lines.append(f'| {shape} | {cache} | {ratio(shape, cache, "synbackup", "python-tool")} '
                         f'| {ratio(shape, cache, "synbackup-3", "python-tool-3")} '
                         f'| {ratio(shape, cache, "synbackup-3", "stream-3")} '
                         f'| {wall(shape, cache, "synbackup-3")} '
                         f'| {wall(shape, cache, "python-tool-3")} '
                         f'| {wall(shape, cache, "stream-3")} |')
    return lines


def scale_run(args):
    """--scale: the mixed shape at a quarter, half and all of --size-gib (default 20),
    warm and cold, one round each: seconds per GiB and peak RssAnon should stay flat
    as the data grows. synbackup alone by default; --commands adds the Python tool,
    mdb_copy and the read limit (read-direct, cold only) at every size, so a curve
    that is not flat can be told apart from one the machine bends for every tool."""
    rows = []
    for frac in args.scale_fractions:
        size = args.size_gib * frac
        src = ensure_source(args, 'mixed', size)
        _, allocated = describe_source(src)
        b = Bench(args, src, f'scale-{size:g}')
        cmds = b.commands()
        names = [n for n in cmds if n in SCALE_COMMANDS or n in dict(args.variants)]
        for cold in (False, True):
            for name in names:
                if name == 'read-direct' and not cold:
                    continue  # O_DIRECT reads the device whatever the cache holds
                r = b.run_one(name, cmds[name], cold, 1)
                rows.append((size, allocated, r))
        rmtree(b.out)
    lines = ['| size GiB (allocated) | command | cache | wall s | s per GiB allocated | '
             'CPU s | peak RssAnon MiB | GB written (read) |',
             '|---|---|---|---|---|---|---|---|']
    for size, allocated, r in rows:
        lines.append(f'| {size:g} ({allocated / GIB:.2f}) | {r["name"]} | {r["cache"]} | '
                     f'{r["wall"]:.2f} | {r["wall"] / (allocated / GIB):.2f} | '
                     f'{r["cpu"]:.2f} | {r["rss_anon_mib"]:.1f} | '
                     f'{r.get("bytes", 0) / 1e9:.3f} |')
    return '\n'.join(lines), rows


# What --scale can measure at every size (dd needs a synbackup run's byte count first).
SCALE_COMMANDS = ('synbackup', 'synbackup-j1', 'python-tool', 'mdb_copy', 'read-direct')


# ---------------------------------------------------------------------------------
# Offsite copies: what restic adds per night, compacted against plain backups
#
# A compacting copy writes the pages in B-tree walk order and numbers them anew, so a
# small change early in a tree shifts (and renumbers: every page header holds its own
# number, every branch its children's) everything after it; a plain copy keeps every
# page where the service put it. --offsite measures what that does to a deduplicating
# upload: night 1 backs up the source, each later night applies a small daily change
# first; every night makes both backups (`synbackup backup`, with and without
# `--no-compact`) and uploads each into its own local restic repository
# (`restic backup --json .` from inside the backup, as an offsite copy would), and
# reports restic's `data_added`, what the repository grew on disk (compressed and
# encrypted: what goes over the wire), and the times.

OFFSITE_FEED = r"""
import asyncio, random, sys
import synapse.telepath as s_telepath
# Storm's $lib.range is (stop, start=None).
ADD = ('for $i in $lib.range($stop, start=$start) { $fqdn = `h{$i}.example.com` '
       '[ inet:ipv4=$i :asn=($i % 5000) :loc=us.va +#$tag ] [ inet:fqdn=$fqdn ] }')
EDIT = 'for $i in $ids { inet:ipv4=$i [ +#$tag :asn=$asn ] }'
async def main(d, start, n, edits, total, day, seed):
    rng = random.Random(seed)
    async with await s_telepath.openurl('cell://' + d) as core:
        async def run(q, opts):
            async for m in core.storm(q, opts=opts):
                if m[0] == 'err':
                    raise SystemExit(str(m))
        for s in range(start, start + n, 2000):
            await run(ADD, {'vars': {'start': s, 'stop': min(s + 2000, start + n),
                                     'tag': f'bench.day{day}'}})
        ids = [rng.randrange(total) for _ in range(edits)]
        for k in range(0, len(ids), 2000):
            await run(EDIT, {'vars': {'ids': ids[k:k + 2000], 'tag': f'bench.seen.day{day}',
                                      'asn': 100000 + day}})
asyncio.run(main(sys.argv[1], *map(int, sys.argv[2:])))
"""

# Every `step`-th inet:ipv4 node of 0..total deleted: free pages all over the layer, as
# in a Cortex that has deleted data since its last maintenance window.
OFFSITE_DELETE = r"""
import asyncio, sys
import synapse.telepath as s_telepath
async def main(d, total, step):
    ids = list(range(0, total, step))
    async with await s_telepath.openurl('cell://' + d) as core:
        for k in range(0, len(ids), 2000):
            async for m in core.storm('for $i in $ids { inet:ipv4=$i | delnode }',
                                      opts={'vars': {'ids': ids[k:k + 2000]}}):
                if m[0] == 'err':
                    raise SystemExit(str(m))
asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""


class OffsiteCortex:
    """A real Cortex for --offsite: the base (N nodes, made once and kept in the
    workdir) copied to a working directory and started; `change` adds nodes and
    edits existing ones through Storm."""

    def __init__(self, args, nodes):
        self.args = args
        self.py = os.path.join(args.venv, 'bin', 'python')
        self.nodes = nodes
        self.base = os.path.join(args.workdir, f'offsite-cortex-{nodes}')
        self.dir = os.path.join(args.workdir, 'offsite', 'cortex')
        self.proc = None
        self.logf = None

    def start(self, d):
        self.logf = open(os.path.join(self.args.workdir, 'offsite-cortex.log'), 'ab')
        self.proc = subprocess.Popen([self.py, '-m', 'synapse.servers.cortex', '--telepath',
                                      'tcp://127.0.0.1:0', '--https', '0', d],
                                     stdout=self.logf, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        if subprocess.run([self.py, '-c', WAIT, d, '300']).returncode != 0:
            raise SystemExit('the Cortex did not answer within 300 s (see offsite-cortex.log)')

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        if self.logf:
            self.logf.close()
            self.logf = None

    def feed(self, d, start, n, edits, total, day):
        subprocess.run([self.py, '-c', OFFSITE_FEED, d, str(start), str(n), str(edits),
                        str(max(1, total)), str(day), str(self.args.seed + day)], check=True)

    def prepare(self):
        stamp = self.base + '.done'
        if not (os.path.exists(stamp) and not self.args.regen):
            rmtree(self.base)
            os.makedirs(self.base)
            log(f'making the base Cortex: {self.nodes} inet:ipv4 nodes (and as many '
                f'inet:fqdn) through Storm')
            t0 = time.monotonic()
            self.start(self.base)
            try:
                self.feed(self.base, 0, self.nodes, 0, 0, 0)
            finally:
                self.stop()
            with open(stamp, 'w') as f:
                f.write(f'{self.nodes}\n')
            log(f'base Cortex made in {time.monotonic() - t0:.0f} s')
        else:
            log(f'reusing {self.base}')
        rmtree(self.dir)
        subprocess.run(['cp', '-a', '--sparse=always', self.base, self.dir], check=True)
        self.start(self.dir)
        self.total = self.nodes
        if self.args.offsite_delete:
            step = max(2, round(1 / self.args.offsite_delete))
            t0 = time.monotonic()
            subprocess.run([self.py, '-c', OFFSITE_DELETE, self.dir, str(self.nodes),
                            str(step)], check=True)
            log(f'deleted every {step}th inet:ipv4 node before night 1 in '
                f'{time.monotonic() - t0:.0f} s')

    def change(self, night, frac):
        new = max(1, int(self.nodes * frac))
        edits = max(1, int(self.nodes * frac / 2))
        self.feed(self.dir, self.total, new, edits, self.total, night)
        self.total += new
        return f'{new} new inet:ipv4 (+ inet:fqdn) nodes, {edits} edited (tag + prop)'


def offsite_kind(rel):
    """The value kind of a generated environment (its path in the mixed shape)."""
    for path, _, kind in BIG_ENVS:
        if rel == path:
            return kind
    return 'small'


class OffsiteGenerated:
    """The bench's generated mixed shape (--offsite-source generated), copied to a
    working directory; `change` applies a daily change with py-lmdb, committed every
    1000 operations as a service would: new random keys, overwritten and deleted
    existing ones, the log appended to and culled from the front."""

    def __init__(self, args):
        self.args = args
        self.dir = os.path.join(args.workdir, 'offsite', 'generated')

    def prepare(self):
        base = ensure_source(self.args, 'mixed')
        rmtree(self.dir)
        subprocess.run(['cp', '-a', '--sparse=always', base, self.dir], check=True)

    def stop(self):
        pass

    def change(self, night, frac):
        rr = Rand(self.args.seed * 1000 + night)
        rng = rr.rng
        ops = 0
        for rel in env_dirs(self.dir):
            kind = offsite_kind(rel)
            env = lmdb.open(os.path.join(self.dir, rel), writemap=True, max_dbs=16384,
                            sync=False, metasync=False, map_size=os.path.getsize(
                                os.path.join(self.dir, rel, 'data.mdb')))
            for name in db_names(kind):
                db = env.open_db(name.encode(), dupsort=name in DUPSORT_DBS)
                with env.begin() as txn:
                    n = txn.stat(db)['entries']
                todo = []
                if kind == 'log' and name == 'nexuslog':
                    with env.begin() as txn:
                        cur = txn.cursor(db=db)
                        seq = int.from_bytes(cur.key(), 'big') + 1 if cur.last() else 0
                    todo += [('append', seq + i) for i in range(int(n * frac))]
                    todo += [('cull', None)] * int(n * frac)
                else:
                    todo += [('put', None)] * int(n * frac)
                    todo += [('edit', None)] * int(n * frac / 2)
                    todo += [('del', None)] * int(n * frac / 2)
                    rng.shuffle(todo)
                for k in range(0, len(todo), 1000):
                    with env.begin(write=True, db=db) as txn:
                        cur = txn.cursor(db=db)
                        for op, arg in todo[k:k + 1000]:
                            ops += 1
                            v = rr.val(rng.randint(8, 40) if name in DUPSORT_DBS
                                       else value_size(kind, rng))
                            if op == 'append':
                                txn.put(arg.to_bytes(8, 'big'), v, db=db, append=True)
                            elif op == 'cull':
                                if cur.first():
                                    cur.delete()
                            elif op == 'put':
                                txn.put(rr.key(rng.choice((8, 16, 32, 40))), v, db=db)
                            elif cur.set_range(rr.key(8)) or cur.first():
                                if op == 'edit':
                                    txn.put(cur.key(), v, db=db)
                                else:
                                    cur.delete()
            env.sync(True)
            env.close()
        return f'{ops} LMDB operations ({frac:.1%} new, {frac / 2:.1%} overwritten, ' \
               f'{frac / 2:.1%} deleted of each database; the log appended and culled)'


def restic(args, repo, cmd, cwd=None, json_out=False):
    env = dict(os.environ, RESTIC_PASSWORD_FILE=os.path.join(args.workdir, 'offsite',
                                                            'restic-password'),
               RESTIC_CACHE_DIR=os.path.join(args.workdir, 'offsite', 'restic-cache'))
    full = [args.restic, '-r', repo] + cmd + (['--json'] if json_out else [])
    return env, full


def dir_bytes(top):
    total = 0
    for root, _, files in os.walk(top):
        for f in files:
            total += os.lstat(os.path.join(root, f)).st_size
    return total


def changed_pages(prev, cur):
    """Per file of backup `cur`: (4 KiB pages and 1 MiB blocks that differ from the same
    offset in backup `prev`, pages and blocks); where a night's new bytes are."""
    out = {}
    for root, _, files in os.walk(cur):
        for f in files:
            p = os.path.join(root, f)
            rel = os.path.relpath(p, cur)
            q = os.path.join(prev, rel)
            pages = blocks = npages = nblocks = 0
            with open(p, 'rb') as a:
                b = open(q, 'rb') if os.path.exists(q) else None
                while True:
                    x = a.read(MIB)
                    if not x:
                        break
                    y = b.read(MIB) if b else b''
                    nblocks += 1
                    npages += (len(x) + 4095) // 4096
                    if x != y:
                        blocks += 1
                        pages += sum(1 for i in range(0, len(x), 4096)
                                     if x[i:i + 4096] != y[i:i + 4096])
                if b:
                    b.close()
            out[rel] = (pages, blocks, npages, nblocks)
    return out


def offsite_run(args):
    """--offsite: returns (Markdown table, rows)."""
    if shutil.which(args.restic) is None:
        raise SystemExit(f'{args.restic} is missing (apt install restic, or --restic PATH)')
    top = os.path.join(args.workdir, 'offsite')
    rmtree(top)
    os.makedirs(top)
    with open(os.path.join(top, 'restic-password'), 'w') as f:
        f.write('synbackup-bench\n')
    repos = {}
    for mode in ('compact', 'plain'):
        repos[mode] = os.path.join(top, f'repo-{mode}')
        env, cmd = restic(args, repos[mode], ['init'])
        subprocess.run(cmd, env=env, check=True, capture_output=True)
    if args.offsite_source == 'cortex':
        source = OffsiteCortex(args, args.offsite_nodes)
    else:
        source = OffsiteGenerated(args)
    rows = []
    prev = {}
    try:
        source.prepare()
        src = source.dir
        for night in range(1, args.offsite_nights + 1):
            change = 'none (first night)'
            if night > 1:
                t0 = time.monotonic()
                change = source.change(night, args.offsite_change)
                log(f'night {night}: {change} in {time.monotonic() - t0:.1f} s')
            for mode in ('compact', 'plain'):
                dst = os.path.join(top, f'{mode}-night{night}')
                load = loadavg()
                cmd = [args.synbackup, 'backup', src, dst, '--json']
                if mode == 'plain':
                    cmd.append('--no-compact')
                b = measure(cmd)
                if b['rc'] != 0:
                    raise SystemExit(f'synbackup ({mode}) failed: {b["stderr"]}')
                summary = json.loads(b['stdout'])
                before = dir_bytes(repos[mode])
                env, rcmd = restic(args, repos[mode], ['backup', '--host', 'bench', '--tag',
                                                       mode, '.'], json_out=True)
                t0 = time.perf_counter()
                r = subprocess.run(rcmd, env=env, cwd=dst, capture_output=True, text=True)
                upload = time.perf_counter() - t0
                if r.returncode != 0:
                    raise SystemExit(f'restic backup ({mode}) failed: {r.stderr[-2000:]}')
                rs = [json.loads(line) for line in r.stdout.splitlines()
                      if line.startswith('{')]
                rs = [x for x in rs if x.get('message_type') == 'summary'][-1]
                grown = dir_bytes(repos[mode]) - before
                row = {'night': night, 'mode': mode, 'change': change,
                       'backup_bytes': summary['bytes_written'], 'backup_s': b['wall'],
                       'freeze_ms': summary.get('freeze_ms'),
                       'upload_s': upload, 'data_added': rs['data_added'],
                       'processed': rs['total_bytes_processed'], 'repo_grown': grown,
                       'load': load}
                rows.append(row)
                log(f'night {night} {mode:7}: backup {summary["bytes_written"] / MIB:7.1f} MiB '
                    f'in {b["wall"]:5.1f} s; restic added {rs["data_added"] / MIB:7.1f} MiB '
                    f'(repository +{grown / MIB:.1f} MiB) in {upload:5.1f} s; load {load:.2f}')
                # Where the new bytes are (same offsets, the night before), then the
                # previous night's backup is not needed any more (restic has it).
                if mode in prev:
                    ch = changed_pages(prev[mode], dst)
                    worst = sorted(ch.items(), key=lambda kv: -kv[1][1])[:3]
                    row['changed_pages'] = sum(v[0] for v in ch.values())
                    row['changed_blocks'] = sum(v[1] for v in ch.values())
                    row['blocks'] = sum(v[3] for v in ch.values())
                    row['top_changed'] = [(k, v[1], v[3]) for k, v in worst]
                    log(f'  {mode}: {row["changed_pages"]} pages in {row["changed_blocks"]} of '
                        f'{row["blocks"]} 1 MiB blocks differ from the night before; most in '
                        + ', '.join(f'{k} ({b}/{n})' for k, b, n in row['top_changed']))
                    rmtree(prev[mode])
                prev[mode] = dst
    finally:
        source.stop()
    for d in prev.values():
        rmtree(d)
    rmtree(os.path.join(top, 'cortex'))
    rmtree(os.path.join(top, 'generated'))
    return offsite_table(rows), rows


def offsite_table(rows):
    lines = ['| night | copy | backup MiB | local backup s | restic s | restic data_added MiB | '
             'repository grew MiB | load |', '|---|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f'| {r["night"]} | {r["mode"]} | {r["backup_bytes"] / MIB:.1f} | '
                     f'{r["backup_s"]:.1f} | {r["upload_s"]:.1f} | {r["data_added"] / MIB:.1f} | '
                     f'{r["repo_grown"] / MIB:.1f} | {r["load"]:.2f} |')
    lines.append('')
    later = [r for r in rows if r['night'] > 1]
    for mode in ('compact', 'plain'):
        rs = [r for r in later if r['mode'] == mode]
        first = [r for r in rows if r['mode'] == mode and r['night'] == 1]
        if not rs or not first:
            continue
        added = med([r['repo_grown'] for r in rs])
        share = med([r['data_added'] / max(1, r['processed']) for r in rs])
        lines.append(f'- {mode}: night 1 stored {first[0]["repo_grown"] / MIB:.1f} MiB; each '
                     f'later night median {added / MIB:.1f} MiB stored, restic found '
                     f'{share:.1%} of the backup new; upload median '
                     f'{med([r["upload_s"] for r in rs]):.1f} s against a local backup of '
                     f'{med([r["backup_s"] for r in rs]):.1f} s.')
    return '\n'.join(lines)



def device_line(d):
    """The device settings of a report's first line."""
    if not d:
        return 'not a block device'
    return ', '.join(f'{k} {v}' for k, v in d.items())


def print_run(args, start_uptime, what, table, key, rows):
    """Print a whole-run report (the offsite or the scale run): when, the load before
    and after, the table; and its rows as JSON under `key` with --json."""
    print(f'date: {time.strftime("%Y-%m-%d %H:%M %Z")}; {os.cpu_count()} CPUs; {what}; '
          f'device {device_line(device_settings(args.workdir))}; '
          f'{memory_line(args.reporting_before, page_reporting(), args.hold_freed_memory)}')
    print(f'uptime before: {start_uptime}')
    print(f'uptime after:  '
          f'{subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}')
    print()
    print(table)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'argv': sys.argv, key: rows}, f, indent=1)


def main():
    default_venv = os.environ.get('SYNBACKUP_TEST_VENV',
                                  '/var/cache/synbackup-ci/venv-synapse-2.256.0')
    target = os.environ.get('CARGO_TARGET_DIR', os.path.join(REPO, 'target'))
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--workdir', default='/var/tmp/synbackup-bench',
                   help='where the generated data and the copies go (not the repo)')
    p.add_argument('--size-gib', type=float, default=None,
                   help='allocated size of the big environments of each shape together '
                   '(default 2.5; 20 with --scale)')
    p.add_argument('--small', action='store_true',
                   help='24 MiB per shape, 1 round, short settle (for CI)')
    p.add_argument('--shapes', default=None,
                   help=f'comma-separated data shapes (default {",".join(SHAPES)}; '
                   f'{RESTORE_SCALE_SHAPES} with --restore --scale)')
    p.add_argument('--scale-sizes', default='1,5,10,20',
                   type=lambda v: [float(x) for x in v.split(',')],
                   help='with --restore --scale: the sizes in GiB (default 1,5,10,20)')
    p.add_argument('--scale-fractions', default='0.25,0.5,1',
                   type=lambda v: [float(x) for x in v.split(',')],
                   help='with --scale: the fractions of --size-gib to run (default 0.25,0.5,1)')
    p.add_argument('--scale', action='store_true',
                   help='instead: the mixed shape at 1/4, 1/2 and all of --size-gib '
                   '(default 20), warm and cold, synbackup alone unless --commands '
                   'names more (run by hand, not in CI)')
    p.add_argument('--read-runs', help=argparse.SUPPRESS)  # internal: the read limit
    p.add_argument('--rounds', type=int, default=None, help='rounds (default 3, --small 1)')
    p.add_argument('--seed', type=int, default=1)
    p.add_argument('--regen', action='store_true', help='generate the data again')
    p.add_argument('--synbackup', default=os.path.join(target, 'release', 'synbackup'))
    p.add_argument('--venv', default=default_venv, help='venv with synapse (the anchor)')
    p.add_argument('--syn3-root', default=os.environ.get(
                       'SYNBACKUP_TEST_SYN3_ROOT',
                       '/var/cache/synbackup-ci/root-sid-synapse-3.7.0'),
                   help='the Synapse 3.7.0 sid tree (tests/synapse3/build-root): its '
                   'tools are measured as peers when it is there')
    p.add_argument('--commands', default=None, help='comma-separated subset to measure '
                   '(default synbackup,synbackup-j1,python-tool,mdb_copy,dd,dd-direct,'
                   'read-direct; --small: synbackup,python-tool,dd-direct,read-direct; both '
                   'with synbackup-3,python-tool-3,stream-3 when the 3.7.0 tree is there; '
                   'also: python-import, python-import-3)')
    p.add_argument('--variant', action='append', default=[], metavar='NAME=PATH',
                   help='also measure another synbackup binary (A/B of engine changes)')
    p.add_argument('--caches', default='warm,cold',
                   help='cache states to measure: warm, cold or both (default)')
    p.add_argument('--no-cold', dest='cold', action='store_false',
                   help='warm cache only (dropping caches needs root)')
    p.add_argument('--no-cortex', dest='cortex', action='store_false',
                   help='skip the live-Cortex freeze measurement')
    p.add_argument('--freeze-runs', type=int, default=None, help='default 5, --small 2')
    p.add_argument('--cortex-views', type=int, default=0,
                   help='fork the Cortex\'s view N times first (more environments)')
    p.add_argument('--settle', type=float, default=None,
                   help='seconds to wait after preparing each command (default 3, --small 0.2)')
    p.add_argument('--offsite', action='store_true',
                   help='instead: nightly backups, compacted and plain, each uploaded into '
                   'a local restic repository after a small daily change: what restic adds '
                   'per night (--small: a quick run on the generated shape)')
    p.add_argument('--offsite-source', choices=('cortex', 'generated'), default=None,
                   help='a real Cortex fed through Storm (default) or the generated mixed '
                   'shape changed with py-lmdb (default with --small)')
    p.add_argument('--offsite-nodes', type=int, default=60000,
                   help='inet:ipv4 nodes of the base Cortex (default 60000, about 350 MiB)')
    p.add_argument('--offsite-nights', type=int, default=None, help='default 5, --small 2')
    p.add_argument('--offsite-change', type=float, default=0.01,
                   help='the daily change, a share of the data (default 0.01)')
    p.add_argument('--offsite-delete', type=float, default=0.0,
                   help='delete this share of the base Cortex\'s inet:ipv4 nodes before '
                   'night 1 (free pages all over, as since a last window; default 0)')
    p.add_argument('--restic', default='restic', help='the restic binary')
    p.add_argument('--mirror', action='store_true',
                   help="the leader's write latency while its mirror is backed up "
                   '(SYNBACKUP_SOURCE=mirror), against a baseline and a backup of the leader')
    p.add_argument('--mirror-seconds', type=float, default=None,
                   help='length of each --mirror phase (default 30, --small 8)')
    p.add_argument('--mirror-nodes', type=int, default=None,
                   help='nodes the --mirror leader starts with (default 50000, --small 2000)')
    p.add_argument('--mirror-split-cpus', action='store_true',
                   help='--mirror: the leader, its writer and a backup of the leader on CPU 0, '
                   'the mirror and the run from it on CPU 1 (two hosts, but one disk)')
    p.add_argument('--mirror-backup-root', default=None,
                   help='--mirror: the backup root of the mirror runs (default in --workdir; '
                   'give another device or a tmpfs to share no disk with the leader)')
    p.add_argument('--seed-mirror', action='store_true',
                   help='a new mirror: synbackup seed-mirror from the nightly backup against '
                   "Synapse's own clone (time to ready, bytes the leader sends, its backups)")
    p.add_argument('--seed-mirror-nodes', dest='seed_nodes', type=int, default=None,
                   help='nodes the --seed-mirror leader has (default 50000, --small 2000)')
    p.add_argument('--seed-mirror-after', dest='seed_after', type=int, default=None,
                   help='nodes written after its backup (default 1000, --small 200)')
    p.add_argument('--pitr', action='store_true',
                   help='the nexus archiver: recovery point, its cost on the writer, '
                   'restore --to against the base and a full restore (see pitr_run)')
    p.add_argument('--pitr-seconds', type=float, default=None,
                   help='--pitr: each phase (default 30, --small 5)')
    p.add_argument('--pitr-seed', type=int, default=2000,
                   help='--pitr: nodes in the Cortex before the base backup')
    p.add_argument('--restore', action='store_true',
                   help='instead: restore rows per shape: synbackup restore against cp -a '
                   '(+ sync, + b3sum -c) and the read and write limits, warm and cold')
    p.add_argument('--restore-offsite', action='store_true',
                   help='instead: offsite restore rows per shape: synbackup restore --offsite '
                   'against restic restore + cp -a + sync and restic restore alone')
    p.add_argument('--generate-only', action='store_true')
    p.add_argument('--keep-sources', action='store_true',
                   help='--restore --scale: keep each generated shape after its backup is '
                   'made (a second run reuses it; needs the room of the shapes as well)')
    p.add_argument('--json', help='also write every measurement to this file')
    p.add_argument('--read-ahead-kb', type=int, default=None,
                   help="set the workdir's device read_ahead_kb for the run (set back "
                   'after): Linux defaults to 128, some images to 8192')
    p.add_argument('--hold-freed-memory', action='store_true',
                   help="turn this VM's free page reporting off for the run (set back "
                   'after): memory a cold round frees stays backed by the host')
    args = p.parse_args()
    if args.read_runs:
        return read_runs(args.read_runs)
    if args.size_gib is None:
        args.size_gib = 20.0 if args.scale else 2.5
    if args.freeze_runs is None:
        args.freeze_runs = 2 if args.small else 5
    if args.settle is None:
        args.settle = 0.2 if args.small else 3.0
    args.shapes = (args.shapes or (RESTORE_SCALE_SHAPES if args.restore and args.scale
                                   else ','.join(SHAPES))).split(',')
    for shape in args.shapes:
        shape_envs(shape, args.small)  # an unknown name fails here, before any work
    if args.commands is None:
        # --small keeps one row of each kind so CI exercises the harness in under a
        # minute on an idle machine (the Cortex start-up is most of it).
        args.commands = (','.join(RESTORE_OFFSITE_COMMANDS) if args.restore_offsite else
                         ','.join(RESTORE_SCALE_COMMANDS) if args.restore and args.scale else
                         ','.join(RESTORE_COMMANDS) if args.restore else
                         'synbackup' if args.scale else
                         'synbackup,python-tool,dd-direct,read-direct' if args.small else
                         'synbackup,synbackup-j1,python-tool,mdb_copy,dd,dd-direct,read-direct')
        if (not args.scale and not args.offsite and not args.restore
                and not args.restore_offsite and syn3_root(args)):
            args.commands += ',synbackup-3,python-tool-3,stream-3'
    args.commands = args.commands.split(',')
    if any(c in SYN3_COMMANDS for c in args.commands) and not syn3_root(args):
        raise SystemExit(f'no Synapse 3.7.0 tree at {args.syn3_root} (tests/synapse3/build-root '
                         'or .ci/setup makes it; --syn3-root): cannot run the 3.7.0 commands')
    args.caches = args.caches.split(',')
    args.variants = [tuple(v.split('=', 1)) for v in args.variant]
    if args.rounds is None:
        args.rounds = 1 if args.small else 3
    if lmdb is None:
        raise SystemExit('py-lmdb is missing: run this with the Synapse venv\'s python')
    if args.cold and os.geteuid() != 0:
        raise SystemExit('dropping the page cache needs root (or give --no-cold)')
    if not os.path.exists(args.synbackup):
        raise SystemExit(f'{args.synbackup} is missing: cargo build --release (or --synbackup)')
    os.makedirs(args.workdir, exist_ok=True)
    args.reporting_before = page_reporting()
    settings = RunSettings()
    try:
        if args.read_ahead_kb is not None:
            set_read_ahead(settings, args.workdir, args.read_ahead_kb)
        if args.hold_freed_memory:
            hold_freed_memory(settings)
        return run_benchmark(args)
    finally:
        settings.restore()


def run_benchmark(args):
    """The run main() set up: generate, measure, report."""
    start_uptime = subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()
    if args.offsite_nights is None:
        args.offsite_nights = 2 if args.small else 5
    if args.offsite_source is None:
        args.offsite_source = 'generated' if args.small else 'cortex'
    if args.mirror:
        if args.mirror_seconds is None:
            args.mirror_seconds = 8.0 if args.small else 30.0
        if args.mirror_nodes is None:
            args.mirror_nodes = 2000 if args.small else 50000
        table, rows = mirror_run(args)
        print_run(args, start_uptime,
                  f'mirror run: {args.mirror_nodes} nodes seeded, {args.rounds} rounds of '
                  f'{args.mirror_seconds:.0f} s phases'
                  + (', leader on CPU 0, mirror on CPU 1' if args.mirror_split_cpus else ''),
                  table, 'mirror', rows)
        return 0
    if args.seed_mirror:
        if args.seed_nodes is None:
            args.seed_nodes = 2000 if args.small else 50000
        if args.seed_after is None:
            args.seed_after = 200 if args.small else 1000
        table, rows = seed_run(args)
        print_run(args, start_uptime,
                  f'seed run: {args.seed_nodes} nodes, {args.seed_after} after the backup, '
                  f'{args.rounds} rounds', table, 'seed', rows)
        return 0
    if args.pitr:
        if args.pitr_seconds is None:
            args.pitr_seconds = 5.0 if args.small else 30.0
        table, rows = pitr_run(args)
        print_run(args, start_uptime,
                  f'pitr run: {args.rounds} rounds of {args.pitr_seconds:.0f} s phases '
                  'with and without the archiver, alternated', table, 'pitr', rows)
        return 0
    if args.offsite:
        table, rows = offsite_run(args)
        print_run(args, start_uptime,
                  f'offsite run: {args.offsite_source} source, {args.offsite_nights} nights, '
                  f'daily change {args.offsite_change:.1%}, deleted first '
                  f'{args.offsite_delete:.0%}', table, 'offsite', rows)
        return 0
    if args.restore_offsite and not args.generate_only:
        table, rows = restore_offsite_run(args)
        print_run(args, start_uptime, f'offsite restore run: shapes {", ".join(args.shapes)}, '
                  f'{args.rounds} rounds', table, 'restore-offsite', rows)
        return 0
    if args.restore and args.scale:
        table, rows = restore_scale_run(args)
        print_run(args, start_uptime, 'restore scale run (cold; each size generated, '
                  'backed up, the shape removed, then measured)', table, 'restore_scale', rows)
        return 0
    if args.restore and not args.generate_only:
        table, rows = restore_run(args)
        print_run(args, start_uptime, f'restore run: shapes {", ".join(args.shapes)}, '
                  f'{args.rounds} rounds', table, 'restore', rows)
        return 0
    if args.scale and args.generate_only:
        for frac in args.scale_fractions:
            ensure_source(args, 'mixed', args.size_gib * frac)
        return 0
    if args.scale:
        table, rows = scale_run(args)
        print_run(args, start_uptime, 'scale run of the mixed shape', table, 'scale',
                  [r for _, _, r in rows])
        return 0
    sources = {}
    shapes_meta = {}
    for shape in args.shapes:
        src = ensure_source(args, shape)
        apparent, allocated = describe_source(src)
        log(f'{shape}: {apparent / GIB:.1f} GiB apparent, {allocated / GIB:.2f} GiB allocated, '
            f'{len(env_dirs(src))} environments')
        sources[shape] = src
        shapes_meta[shape] = {'apparent': apparent, 'allocated': allocated,
                              'environments': len(env_dirs(src))}
    if args.generate_only:
        return 0
    results = []
    cell3 = Cell3(args) if any(c in SYN3_COMMANDS for c in args.commands) else None
    try:
        for shape in args.shapes:
            b = Bench(args, sources[shape], shape, cell3)
            shapes_meta[shape]['live'] = b.live_bytes
            b.run()
            results.extend(b.results)
    finally:
        if cell3:
            cell3.stop()
    freeze = []
    if args.cortex and os.path.exists(os.path.join(args.venv, 'bin', 'python')):
        freeze = cortex_freeze(args)
    meta = {'date': time.strftime('%Y-%m-%d %H:%M %Z'), 'rounds': args.rounds,
            'uptime_start': start_uptime,
            'uptime_end': subprocess.run(['uptime'], capture_output=True,
                                         text=True).stdout.strip(),
            'cpus': os.cpu_count(), 'shapes': shapes_meta, 'argv': sys.argv,
            'device': device_settings(args.workdir),
            'page_reporting': {'before': args.reporting_before, 'after': page_reporting()}}
    table, _ = summarize(results, freeze, meta)
    offsite = None
    if args.small and shutil.which(args.restic):
        # Two nights on the small generated shape: keeps the offsite harness working
        # (about 15 s); the numbers mean something only at size (--offsite).
        offsite, _ = offsite_run(args)
    print(f'date: {meta["date"]}; {meta["cpus"]} CPUs; shapes {", ".join(args.shapes)}; '
          f'device {device_line(meta["device"])}; '
          f'{memory_line(args.reporting_before, page_reporting(), args.hold_freed_memory)}')
    print(f'uptime before: {start_uptime}')
    print(f'uptime after:  {meta["uptime_end"]}')
    print()
    print(table)
    if offsite:
        print()
        print('### offsite: restic uploads, compacted and plain (--small)')
        print()
        print(offsite)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'meta': meta, 'results': results, 'freeze': freeze}, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
