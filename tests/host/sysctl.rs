// SPDX-License-Identifier: Apache-2.0
//! `synbackup sysctl` against fixture trees, zram-generator style: adding a case is
//! adding a folder under `tests/sysctl/`.
//!
//! Each `tests/sysctl/NN-name/` is copied into a temporary directory, ROOT, and the
//! real binary runs `synbackup sysctl --root ROOT ARGS`. The folder holds:
//! - `proc/meminfo`, `proc/sys/vm/*`: the fake host (either may be missing);
//! - `cmdline` (optional): ARGS on one line; the word prefix `ROOT` becomes the copy;
//! - `expected.conf` or `expected.stdout`: the whole stdout (missing: stdout is empty);
//!   `.conf` for the printed drop-in, `.stdout` for the check and apply reports;
//! - `expected.stderr` (optional): the whole stderr with the copy's path as `ROOT`
//!   (missing: stderr is empty);
//! - `expected.exit` (optional): the exit code (missing: 0);
//! - `expected/` (optional): files that must be in ROOT afterwards, byte for byte
//!   (`--apply` results, `--write` targets).
//!
//! `SYNBACKUP_BLESS=1 cargo test --test tests host::sysctl::` rewrites the expected stdout, stderr
//! and exit files from what the binary does (not `expected/`); review the diff.

use crate::util::command;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const BIN: &str = env!("CARGO_BIN_EXE_synbackup");

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sysctl")
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dst = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &dst);
        } else {
            fs::copy(entry.path(), &dst).unwrap();
        }
    }
}

/// Every regular file below `dir`, as paths relative to it, sorted.
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in fs::read_dir(dir.join(&rel)).unwrap() {
            let entry = entry.unwrap();
            let rel = rel.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                stack.push(rel);
            } else {
                out.push(rel);
            }
        }
    }
    out.sort();
    out
}

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Run `synbackup sysctl --root ROOT ARGS`; stderr has ROOT's path replaced by `ROOT`.
fn run(root: &Path, args: &[String]) -> Output {
    let out = command(BIN)
        .arg("sysctl")
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("JOURNAL_STREAM")
        .output()
        .unwrap();
    let root_text = root.to_str().unwrap();
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr)
            .unwrap()
            .replace(root_text, "ROOT"),
    }
}

fn read_opt(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok()
}

/// Run one fixture; the differences from what it expects (empty: it passed).
fn check_case(case: &Path, bless: bool) -> Vec<String> {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    copy_tree(case, &root);
    let args: Vec<String> = read_opt(&case.join("cmdline"))
        .unwrap_or_default()
        .split_whitespace()
        .map(|w| match w.strip_prefix("ROOT") {
            Some(rest) => format!("{}{rest}", root.display()),
            None => w.to_string(),
        })
        .collect();
    let out = run(&root, &args);

    let stdout_file = if case.join("expected.stdout").exists()
        || args.iter().any(|a| a == "--apply" || a == "--check")
    {
        "expected.stdout"
    } else {
        "expected.conf"
    };
    if bless {
        let put = |name: &str, text: &str, keep: bool| {
            let path = case.join(name);
            if keep {
                fs::write(path, text).unwrap();
            } else if path.exists() {
                fs::remove_file(path).unwrap();
            }
        };
        put(stdout_file, &out.stdout, !out.stdout.is_empty());
        put("expected.stderr", &out.stderr, !out.stderr.is_empty());
        put("expected.exit", &format!("{}\n", out.code), out.code != 0);
    }

    let mut problems = Vec::new();
    let want_code: i32 = read_opt(&case.join("expected.exit"))
        .map(|s| s.trim().parse().unwrap())
        .unwrap_or(0);
    if out.code != want_code {
        problems.push(format!("exit code {}, expected {want_code}", out.code));
    }
    let want_stdout = read_opt(&case.join(stdout_file)).unwrap_or_default();
    if out.stdout != want_stdout {
        problems.push(format!(
            "stdout differs from {stdout_file}:\n--- got\n{}--- expected\n{want_stdout}---",
            out.stdout
        ));
    }
    let want_stderr = read_opt(&case.join("expected.stderr")).unwrap_or_default();
    if out.stderr != want_stderr {
        problems.push(format!(
            "stderr differs:\n--- got\n{}--- expected\n{want_stderr}---",
            out.stderr
        ));
    }
    let expected_tree = case.join("expected");
    if expected_tree.is_dir() {
        for rel in files_below(&expected_tree) {
            let want = fs::read(expected_tree.join(&rel)).unwrap();
            match fs::read(root.join(&rel)) {
                Ok(got) if got == want => {}
                Ok(got) => problems.push(format!(
                    "{} is {:?}, expected {:?}",
                    rel.display(),
                    String::from_utf8_lossy(&got),
                    String::from_utf8_lossy(&want)
                )),
                Err(e) => problems.push(format!("{}: {e}", rel.display())),
            }
        }
    }
    problems
}

#[test]
fn fixture_trees() {
    let bless = std::env::var_os("SYNBACKUP_BLESS").is_some();
    let mut cases: Vec<PathBuf> = fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 30,
        "only {} fixture cases found",
        cases.len()
    );
    let mut failed = Vec::new();
    for case in &cases {
        let problems = check_case(case, bless);
        if !problems.is_empty() {
            let name = case.file_name().unwrap().to_string_lossy().into_owned();
            failed.push(format!("{name}:\n  {}", problems.join("\n  ")));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} fixture cases failed:\n{}",
        failed.len(),
        cases.len(),
        failed.join("\n")
    );
}

#[test]
fn write_is_the_printed_dropin_written_atomically() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    copy_tree(&fixtures().join("05-128gib"), &root);
    let printed = run(&root, &[]);
    assert_eq!(printed.code, 0, "{}", printed.stderr);
    assert!(printed.stdout.contains("\nvm.dirty_ratio = 4\n"));

    let dir = tmp.path().join("out/sysctl.d");
    let target = dir.join("61-synbackup-memory.conf");
    let args = ["--write".to_string(), target.to_str().unwrap().to_string()];
    let written = run(&root, &args);
    assert_eq!(written.code, 0, "{}", written.stderr);
    assert_eq!(written.stdout, "", "--write prints nothing on stdout");
    assert_eq!(fs::read_to_string(&target).unwrap(), printed.stdout);
    let mode = fs::metadata(&target).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o644);
    assert_eq!(
        files_below(&dir),
        [PathBuf::from("61-synbackup-memory.conf")]
    );

    // A second write (another RAM) replaces the file and leaves no temporary behind.
    let again = run(
        &root,
        &[args[0].clone(), args[1].clone(), "--mem-total=1TiB".into()],
    );
    assert_eq!(again.code, 0, "{}", again.stderr);
    let text = fs::read_to_string(&target).unwrap();
    assert!(text.contains("\nvm.dirty_bytes = 5497558138\n"), "{text}");
    assert_eq!(
        files_below(&dir),
        [PathBuf::from("61-synbackup-memory.conf")]
    );
}

#[test]
fn apply_then_check_passes_and_apply_again_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    copy_tree(&fixtures().join("40-apply-kernel-defaults"), &root);
    assert_eq!(run(&root, &["--check".into()]).code, 9);
    let applied = run(&root, &["--apply".into()]);
    assert_eq!(applied.code, 0, "{}", applied.stderr);
    assert!(applied.stdout.contains("vm.swappiness: 60 -> 10\n"));
    let checked = run(&root, &["--check".into()]);
    assert_eq!(checked.code, 0, "{}{}", checked.stdout, checked.stderr);
    let again = run(&root, &["--apply".into()]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(
        again.stdout.lines().count(),
        again.stdout.matches("(unchanged)").count()
    );
}

#[test]
fn errors_are_one_line_naming_the_path() {
    for case in [
        "20-missing-meminfo",
        "21-garbled-meminfo",
        "23-empty-meminfo",
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        copy_tree(&fixtures().join(case), &root);
        let out = run(&root, &[]);
        assert_ne!(out.code, 0, "{case}");
        assert_eq!(out.stderr.lines().count(), 1, "{case}: {}", out.stderr);
        assert!(
            out.stderr.contains("ROOT/proc/meminfo"),
            "{case}: {}",
            out.stderr
        );
        assert_eq!(out.stdout, "", "{case}");
    }
}
