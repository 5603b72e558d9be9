#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Remake vendor/lmdb from py-lmdb's source distribution on PyPI: LMDB 0.9.33 as
# Synapse runs it (py-lmdb bundles it and applies its two patches at build time,
# among them env-copy-txn.patch, which adds mdb_env_copyfd3: a compacting copy from
# a read transaction the caller holds), then synbackup's own copy-callback.patch
# (mdb_env_copycb3). Usage: vendor/lmdb/update.sh [VERSION]
set -euo pipefail
version=${1:-1.7.5}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download -q --no-deps --no-binary :all: "lmdb==$version" -d "$work"
tar -xzf "$work/lmdb-$version.tar.gz" -C "$work"
src=$work/lmdb-$version
cp "$src/lib/lmdb.h" "$src/lib/mdb.c" "$src/lib/midl.c" "$src/lib/midl.h" "$here/"
cp "$src/LICENSE" "$here/LICENSE"
for p in env-copy-txn.patch its-10346.patch; do
  cp "$src/lib/py-lmdb/$p" "$here/$p"
  patch -d "$here" -p3 --quiet --no-backup-if-mismatch < "$here/$p"
done
# Ours, kept here (not in py-lmdb): mdb_env_copycb3, the compacting or plain copy
# of a held transaction into a callback (synbackup hashes and writes each buffer
# itself, no pipe).
patch -d "$here" -p3 --quiet --no-backup-if-mismatch < "$here/copy-callback.patch"
# Ours: LMDB opens no file through a symlink at its name (nofollow.patch; synbackup
# runs as root over directories another user owns).
patch -d "$here" -p3 --quiet --no-backup-if-mismatch < "$here/nofollow.patch"
echo "vendored LMDB from py-lmdb $version into $here"
