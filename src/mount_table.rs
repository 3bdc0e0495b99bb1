//! The kernel's mount table (/proc/self/mountinfo), read without touching any mount: a
//! mount point whose server is away or whose daemon is gone answers nothing useful.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The filesystem type of the mount at `path` (as mountinfo writes paths: absolute, resolved),
/// if something is mounted there; the last one mounted wins, as it is the one seen.
pub fn fs_type_at(path: &Path) -> Option<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let wanted = escape_mount_path(path);
    table.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let separator = fields.iter().position(|f| *f == "-")?;
        (fields.get(4)? == &wanted).then(|| fields.get(separator + 1).map(|t| t.to_string()))?
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn escape_mount_path(path: &Path) -> String {
    let mut out = String::new();
    for &b in path.as_os_str().as_bytes() {
        match b {
            b' ' | b'\t' | b'\n' | b'\\' => out.push_str(&format!("\\{b:03o}")),
            _ => out.push(b as char),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_is_mounted_and_paths_are_escaped_as_the_kernel_does() {
        assert!(fs_type_at(Path::new("/")).is_some());
        assert_eq!(escape_mount_path(Path::new("/a b\\c")), "/a\\040b\\134c");
    }
}
