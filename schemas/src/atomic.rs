//! Atomic file creation: write to a temporary file in the same directory, fsync, rename.
//!
//! A reader never sees a half-written file under its final name: either the old content (or no
//! file) or the complete new one. The directory is fsynced after the rename so the new name
//! survives a power loss.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Result, SchemaError};

/// The temporary name used while `path` is being written: `.NAME.tmp` in the same directory.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// The temporary name for a file that several processes may write at once, each the same
/// content (a cache entry): `.NAME.PID.tmp`, so no process renames another's unfinished file.
pub fn process_temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Writes `bytes` to `path` atomically.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    write_through(&temp_path(path), path, bytes)
}

/// Writes `bytes` to `path` atomically where other processes may be writing the same file at
/// the same time (through [`process_temp_path`]); the last rename wins.
pub fn write_file_shared(path: &Path, bytes: &[u8]) -> Result<()> {
    write_through(&process_temp_path(path), path, bytes)
}

fn write_through(tmp: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp.to_path_buf();
    let mut file = File::create(&tmp).map_err(|e| SchemaError::io(&tmp, e))?;
    file.write_all(bytes)
        .map_err(|e| SchemaError::io(&tmp, e))?;
    file.sync_all().map_err(|e| SchemaError::io(&tmp, e))?;
    drop(file);
    commit(&tmp, path)
}

/// Renames a finished, fsynced temporary file to its final name and fsyncs the directory.
pub fn commit(tmp: &Path, path: &Path) -> Result<()> {
    fs::rename(tmp, path).map_err(|e| SchemaError::io(path, e))?;
    sync_dir(path)
}

/// Fsyncs the directory holding `path`, so a rename or removal in it is durable.
pub fn sync_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // Directories can be opened read-only and fsynced on Unix; elsewhere this is best effort.
    match File::open(dir) {
        Ok(handle) => {
            if cfg!(unix) {
                handle.sync_all().map_err(|e| SchemaError::io(dir, e))?;
            }
            Ok(())
        }
        Err(e) => Err(SchemaError::io(dir, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_writes_replace_the_file_and_leave_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("entry.ptx");
        write_file_shared(&path, b"first").unwrap();
        write_file_shared(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["entry.ptx"]);
        let tmp = process_temp_path(&path);
        assert_ne!(tmp, temp_path(&path));
        assert!(tmp
            .file_name()
            .unwrap()
            .to_string_lossy()
            .contains(&std::process::id().to_string()));
    }
}
