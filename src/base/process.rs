// SPDX-License-Identifier: Apache-2.0
//! Whether a process recorded earlier (in a freeze record, in the name of a drill's
//! scratch copy or of a restore's staging copy) still runs.

/// True when process `pid` exists (signal 0: EPERM means it exists, owned by
/// another user).
pub(crate) fn alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(e) => e == nix::errno::Errno::EPERM,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_is_alive_and_an_unused_pid_is_not() {
        assert!(super::alive(std::process::id()));
        // Above the kernel's pid_max (at most 2^22).
        assert!(!super::alive(1 << 23));
        assert!(!super::alive(u32::MAX));
    }
}
