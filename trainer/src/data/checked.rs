//! Token files checked against the manifest's sha256 before they are trained on: each shard
//! once, when the loader first reads an example of it (so on the loader's thread, overlapping
//! the steps), never again for the rest of the run. `Corpus::open` already checked every index
//! file's sha256, header and size; this adds the token bytes, which are too large to hash on
//! every open.

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use redpack_schemas::Corpus;
use sha2::{Digest, Sha256};

use super::{DataError, ExampleSource, OwnedExample};

/// A corpus whose token files are verified on first use (or not at all, when asked).
pub struct CheckedCorpus {
    corpus: Corpus,
    /// Per shard: checked already (or checks are off).
    checked: Vec<AtomicBool>,
}

impl CheckedCorpus {
    /// `verify = false` reads the token files unchecked (`--no-verify`).
    pub fn new(corpus: Corpus, verify: bool) -> CheckedCorpus {
        let checked = (0..corpus.num_shards())
            .map(|_| AtomicBool::new(!verify))
            .collect();
        CheckedCorpus { corpus, checked }
    }

    pub fn corpus(&self) -> &Corpus {
        &self.corpus
    }

    /// Checks shard `s`'s token file unless it was checked before.
    pub fn check_shard(&self, s: usize) -> Result<(), DataError> {
        let Some(flag) = self.checked.get(s) else {
            return Ok(());
        };
        if flag.load(Ordering::Acquire) {
            return Ok(());
        }
        let entry = &self.corpus.manifest().shards[s];
        let path = self.corpus.dir().join(&entry.tokens_file);
        let got = file_sha256(&path)?;
        if got != entry.tokens_sha256 {
            return Err(DataError::Checksum {
                path,
                got,
                want: entry.tokens_sha256.clone(),
            });
        }
        flag.store(true, Ordering::Release);
        Ok(())
    }
}

fn file_sha256(path: &Path) -> Result<String, DataError> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

impl ExampleSource for CheckedCorpus {
    fn place(&self) -> String {
        self.corpus.place()
    }

    fn len(&self) -> u64 {
        Corpus::len(&self.corpus)
    }

    fn example(&self, index: u64) -> Result<OwnedExample, DataError> {
        let shard = Corpus::example(&self.corpus, index)?.shard;
        self.check_shard(shard)?;
        ExampleSource::example(&self.corpus, index)
    }

    fn source_name(&self, index: u64) -> Result<String, DataError> {
        ExampleSource::source_name(&self.corpus, index)
    }
}
