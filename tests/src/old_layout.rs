//! Raw `bpf(2)` helpers: pinned maps of an older rpz-guard layout, built by
//! hand, for the layout-migration tests (an older build's pins without the
//! older build).

use std::{ffi::CString, os::fd::RawFd, path::Path};

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> i64 {
    // SAFETY: a zeroed bpf_attr of ample size; pointers set by callers stay valid.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of_val(attr)) }
}

/// A hash map (type 1) with `flags`, pinned at `path` (replacing the pin there).
pub fn pinned_hash(path: &Path, key_size: u32, value_size: u32, max: u32, flags: u32) -> RawFd {
    let mut attr = [0u64; 16];
    attr[0] = 1 | u64::from(key_size) << 32;
    attr[1] = u64::from(value_size) | u64::from(max) << 32;
    attr[2] = u64::from(flags);
    let fd = bpf(0, &mut attr);
    assert!(fd >= 0, "BPF_MAP_CREATE: {}", std::io::Error::last_os_error());
    let _ = std::fs::remove_file(path);
    let c = CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    let mut attr = [0u64; 16];
    attr[0] = c.as_ptr() as u64;
    attr[1] = fd as u64;
    assert_eq!(bpf(6, &mut attr), 0, "BPF_OBJ_PIN: {}", std::io::Error::last_os_error());
    fd as RawFd
}

/// `BPF_MAP_UPDATE_ELEM`.
pub fn put(fd: RawFd, key: &[u8], value: &[u8]) {
    let mut attr = [0u64; 16];
    attr[0] = fd as u64;
    attr[1] = key.as_ptr() as u64;
    attr[2] = value.as_ptr() as u64;
    assert_eq!(bpf(2, &mut attr), 0, "BPF_MAP_UPDATE_ELEM: {}", std::io::Error::last_os_error());
}
