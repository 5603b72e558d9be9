// SPDX-License-Identifier: Apache-2.0
//! Builds the vendored LMDB (vendor/lmdb: 0.9.33 with py-lmdb's patches, the LMDB
//! Synapse itself runs) with the flags py-lmdb uses: LMDB's defaults (robust POSIX
//! mutexes in the lock file, lock format 1) and assertions kept.

fn main() {
    let dir = std::path::Path::new("vendor/lmdb");
    for f in ["mdb.c", "midl.c", "lmdb.h", "midl.h"] {
        println!("cargo:rerun-if-changed={}", dir.join(f).display());
    }
    cc::Build::new()
        .file(dir.join("mdb.c"))
        .file(dir.join("midl.c"))
        .include(dir)
        .flag("-UNDEBUG")
        .warnings(false)
        .compile("lmdb");
}
