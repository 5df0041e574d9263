//! The crate's only `unsafe`: a read-only memory map of a finished shard file (or of a build's
//! token scratch file, written and renamed the same way).

use std::fs::File;
use std::path::Path;

use crate::error::{Result, SchemaError};

/// A read-only memory map of a whole file.
///
/// # Safety contract
///
/// Mapping a file is sound only while nobody modifies or truncates it: a concurrent writer could
/// change bytes under a `&[u8]` we handed out (undefined behaviour), and a truncation turns reads
/// into `SIGBUS`. redpack never modifies a shard after it is renamed into place (writers create
/// new files and rename them; see `atomic`), so a corpus that is only read by redpack keeps that
/// contract. Users must not edit shard files in place while a reader has them open.
#[derive(Debug)]
pub struct Mmap {
    map: Option<memmap2::Mmap>,
}

impl Mmap {
    /// Maps `path` read-only. Empty files are represented without a mapping.
    pub fn open(path: &Path) -> Result<Mmap> {
        let file = File::open(path).map_err(|e| SchemaError::io(path, e))?;
        let len = file.metadata().map_err(|e| SchemaError::io(path, e))?.len();
        if len == 0 {
            return Ok(Mmap { map: None });
        }
        // SAFETY: the file is opened read-only and redpack never writes to a shard after its
        // atomic rename; the contract above documents the remaining (external) requirement.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| SchemaError::io(path, e))?;
        Ok(Mmap { map: Some(map) })
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

impl AsRef<[u8]> for Mmap {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}
