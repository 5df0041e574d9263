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

/// Writes `bytes` to `path` atomically.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
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
