//! Failures injected by tests into a debug build, to show that a failed write is repaired
//! or remembered (the failures themselves are those a full disk or a lack of file
//! descriptors causes, which a test cannot aim at one write).
//!
//! With `TSN_FAILPOINTS=<dir>` in the environment, the failpoint `name` fails while the
//! file `<dir>/<name>` exists: a test creates the file, watches the failure, and removes
//! it to let the writes through again. Release builds ignore the variable.

/// An I/O error at `path` if the failpoint `name` is on.
pub fn check(name: &str, path: &std::path::Path) -> Result<(), crate::DatastoreError> {
    if on(name) {
        return Err(crate::DatastoreError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(format!("failpoint {name} is on")),
        });
    }
    Ok(())
}

#[cfg(debug_assertions)]
fn on(name: &str) -> bool {
    std::env::var_os("TSN_FAILPOINTS")
        .is_some_and(|dir| std::path::Path::new(&dir).join(name).exists())
}

#[cfg(not(debug_assertions))]
fn on(_name: &str) -> bool {
    false
}
