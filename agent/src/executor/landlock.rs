//! Landlock for `command` tasks: read and execute anywhere the sandbox
//! user may, write only in the task's private working directory, the
//! directories `COMMAND_WRITABLE_PATHS` names and `/dev/null`.
//!
//! The ruleset is built in the agent (it opens paths and allocates) and
//! only `landlock_restrict_self` runs in the forked child, which is
//! async-signal-safe. Raw syscalls with the kernel's stable UAPI structs,
//! so no crate stands between the agent and the ABI it asked for.

use std::{
    ffi::CString,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    os::unix::ffi::OsStrExt,
    path::Path,
};

const EXECUTE: u64 = 1 << 0;
const WRITE_FILE: u64 = 1 << 1;
const READ_FILE: u64 = 1 << 2;
const READ_DIR: u64 = 1 << 3;
/// REMOVE_DIR … MAKE_SYM (ABI 1).
const CHANGE_TREE: u64 = (1 << 4)
    | (1 << 5)
    | (1 << 6)
    | (1 << 7)
    | (1 << 8)
    | (1 << 9)
    | (1 << 10)
    | (1 << 11)
    | (1 << 12);
const REFER: u64 = 1 << 13; // ABI 2
const TRUNCATE: u64 = 1 << 14; // ABI 3
const IOCTL_DEV: u64 = 1 << 15; // ABI 5

const CREATE_RULESET_VERSION: u32 = 1;
const RULE_PATH_BENEATH: u32 = 1;

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// The kernel's Landlock ABI version, or why there is none.
pub fn abi() -> Result<i64, String> {
    // SAFETY: the documented version query: no pointer is dereferenced.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    if v < 1 {
        return Err(format!(
            "the kernel has no Landlock ({})",
            std::io::Error::last_os_error()
        ));
    }
    Ok(v)
}

/// Every file system right this ABI knows.
fn handled(abi: i64) -> u64 {
    let mut all = EXECUTE | WRITE_FILE | READ_FILE | READ_DIR | CHANGE_TREE;
    if abi >= 2 {
        all |= REFER;
    }
    if abi >= 3 {
        all |= TRUNCATE;
    }
    if abi >= 5 {
        all |= IOCTL_DEV;
    }
    all
}

/// A ruleset for one task: `read_only` beneath `/`, everything beneath
/// each of `writable`. The child applies it with [`restrict_self`].
pub fn ruleset(abi: i64, writable: &[&Path]) -> std::io::Result<OwnedFd> {
    let all = handled(abi);
    let attr = RulesetAttr {
        handled_access_fs: all,
    };
    // SAFETY: attr is a valid, initialized struct of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const RulesetAttr,
            std::mem::size_of::<RulesetAttr>(),
            0u32,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new file descriptor we now own.
    let ruleset = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let read_only = EXECUTE | READ_FILE | READ_DIR | (all & IOCTL_DEV);
    add(&ruleset, Path::new("/"), read_only)?;
    for dir in writable {
        add(&ruleset, dir, all)?;
    }
    // A file rule may only carry file rights.
    add(
        &ruleset,
        Path::new("/dev/null"),
        (READ_FILE | WRITE_FILE | TRUNCATE | IOCTL_DEV) & all,
    )?;
    Ok(ruleset)
}

fn add(ruleset: &OwnedFd, path: &Path, access: u64) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("a path with a NUL byte"))?;
    // SAFETY: c is a valid NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: open returned a new descriptor we own.
    let parent = unsafe { OwnedFd::from_raw_fd(fd) };
    let attr = PathBeneathAttr {
        allowed_access: access,
        parent_fd: parent.as_raw_fd(),
    };
    // SAFETY: attr is valid for the call; both descriptors are open.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset.as_raw_fd(),
            RULE_PATH_BENEATH,
            &attr as *const PathBeneathAttr,
            0u32,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// In the forked child, after `no_new_privs`: enforce the ruleset.
/// Async-signal-safe (one syscall).
pub fn restrict_self(ruleset: i32) -> std::io::Result<()> {
    // SAFETY: a plain syscall on a descriptor the child inherited.
    let r = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0u32) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}
