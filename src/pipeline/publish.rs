//! Publishing a finished build: the new corpus, complete in the work directory's `staged/`
//! folder, replaces the one in the output directory.
//!
//! Until this step the output directory is not touched, so a build that fails (bad input, too
//! many rejects, a kill) leaves the corpus there exactly as it was. The replacement is a few
//! renames within one filesystem, in an order that never leaves a mixed corpus: the old
//! manifest goes first (the folder stops being a corpus), then the old shards, then the new
//! files come in, and the new manifest comes last.

use std::path::Path;

use redpack_schemas::{atomic, Manifest, SplitName, MANIFEST_FILE};

use super::split::EVAL_DIR;
use super::types::BuildError;

/// True when `dir/eval` holds the evaluation side of a split (the only kind of `eval` folder a
/// build replaces).
fn is_eval_side(dir: &Path) -> bool {
    Manifest::load(&dir.join(EVAL_DIR))
        .is_ok_and(|m| m.split.is_some_and(|s| s.split == SplitName::Eval))
}

fn rename(from: &Path, to: &Path) -> Result<(), BuildError> {
    std::fs::rename(from, to).map_err(|e| {
        BuildError::io(
            to,
            std::io::Error::new(
                e.kind(),
                format!(
                    "cannot move the new corpus file {} here: {e}",
                    from.display()
                ),
            ),
        )
    })
}

/// Moves the corpus in `staged` into `out`, replacing the corpus there.
pub fn publish(staged: &Path, out: &Path) -> Result<(), BuildError> {
    let manifest = out.join(MANIFEST_FILE);
    match std::fs::remove_file(&manifest) {
        Ok(()) => atomic::sync_dir(&manifest)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(BuildError::io(&manifest, e)),
    }
    redpack_schemas::remove_old_shards(out)?;
    let old_eval = out.join(EVAL_DIR);
    if is_eval_side(out) {
        std::fs::remove_dir_all(&old_eval).map_err(|e| BuildError::io(&old_eval, e))?;
    }
    let entries = std::fs::read_dir(staged).map_err(|e| BuildError::io(staged, e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| BuildError::io(staged, e))?;
        if entry.file_name() != MANIFEST_FILE {
            names.push(entry.file_name());
        }
    }
    names.sort();
    for name in names {
        rename(&staged.join(&name), &out.join(&name))?;
    }
    rename(&staged.join(MANIFEST_FILE), &manifest)?;
    atomic::sync_dir(&manifest)?;
    Ok(())
}
