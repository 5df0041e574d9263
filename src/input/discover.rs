//! Turns the `--input` paths (files, directories, globs) into an ordered list of input files.
//!
//! Order is what makes outputs reproducible: files come in the order the paths were given;
//! a directory contributes its data files recursively in byte-wise sorted order; a glob its
//! matches in the glob crate's (sorted) order. A file reached twice is read once, at its first
//! place. Inside directories only data files are taken (`.jsonl`, `.parquet`, and
//! `.zst`/`.zstd`/`.gz` whose name contains `.json`), so READMEs, checksum lists, `tokenizer.json`
//! files and hidden files next to the data are skipped; a file named explicitly is always taken.
//!
//! Source names come from the path (see [`source_from_path`]).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::names::source_from_path;
use super::{detect_format, FormatHint, InputError, InputFile};

/// Expands `paths` into input files, in order, and detects each one's format.
pub fn discover(paths: &[PathBuf], hint: FormatHint) -> Result<Vec<InputFile>, InputError> {
    let mut found: Vec<(PathBuf, String)> = Vec::new();
    for path in paths {
        if path.exists() {
            if path.is_dir() {
                let before = found.len();
                walk(path, path, &mut found, &mut HashSet::new())?;
                if found.len() == before {
                    return Err(InputError::EmptyDirectory { path: path.clone() });
                }
            } else {
                found.push((path.clone(), slash_path(path)));
            }
        } else if is_glob(path) {
            expand_glob(path, &mut found)?;
        } else {
            return Err(InputError::NotFound { path: path.clone() });
        }
    }
    let mut seen = HashSet::new();
    let mut files = Vec::with_capacity(found.len());
    for (path, display) in found {
        if !seen.insert(path.clone()) {
            continue;
        }
        let format = detect_format(&path, hint)?;
        files.push(InputFile {
            source: source_from_path(&path).into(),
            display: Arc::from(display),
            path,
            format,
            sha256: None,
        });
    }
    Ok(files)
}

fn is_glob(path: &Path) -> bool {
    path.to_string_lossy().contains(['*', '?', '['])
}

fn expand_glob(pattern: &Path, found: &mut Vec<(PathBuf, String)>) -> Result<(), InputError> {
    let text = pattern.to_string_lossy().into_owned();
    let matches = glob::glob(&text).map_err(|err| InputError::BadGlob {
        pattern: text.clone(),
        message: err.to_string(),
    })?;
    let before = found.len();
    for entry in matches {
        let path = entry.map_err(|err| InputError::Io {
            path: err.path().to_owned(),
            source: err.into(),
        })?;
        if path.is_dir() {
            walk(&path, &path, found, &mut HashSet::new())?;
        } else {
            let display = slash_path(&path);
            found.push((path, display));
        }
    }
    if found.len() == before {
        return Err(InputError::EmptyGlob { pattern: text });
    }
    Ok(())
}

/// Adds the data files under `dir`, sorted by name at each level, displayed relative to `root`.
/// Symlinked folders are followed once each (`visited` holds canonical paths), so a link loop
/// cannot recurse forever.
fn walk(
    root: &Path,
    dir: &Path,
    found: &mut Vec<(PathBuf, String)>,
    visited: &mut HashSet<PathBuf>,
) -> Result<(), InputError> {
    let io = |source| InputError::Io {
        path: dir.to_owned(),
        source,
    };
    if !visited.insert(dir.canonicalize().map_err(io)?) {
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    entries.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    for path in entries {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            walk(root, &path, found, visited)?;
        } else if is_data_file(&name) {
            let relative = path.strip_prefix(root).unwrap_or(&path);
            found.push((path.clone(), slash_path(relative)));
        }
    }
    Ok(())
}

fn is_data_file(name: &str) -> bool {
    let extension = name.rsplit('.').next().unwrap_or("");
    match extension {
        "jsonl" | "parquet" => true,
        "zst" | "zstd" | "gz" => name.contains(".json"),
        _ => false,
    }
}

/// A path with `/` separators, for provenance that reads the same on every OS.
fn slash_path(path: &Path) -> String {
    let parts: Vec<String> = path
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    parts.join("/").replace("//", "/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(path: &str) -> String {
        source_from_path(Path::new(path))
    }

    #[test]
    fn sources_from_redpajama_and_flan_layouts() {
        let v1 = "redpajama-data-1T/v1.0.0";
        assert_eq!(source(&format!("{v1}/arxiv/arxiv_0a1b.jsonl")), "arxiv");
        assert_eq!(
            source(&format!("{v1}/c4/c4-train.00000-of-01024.jsonl")),
            "c4"
        );
        assert_eq!(
            source(&format!("{v1}/github/filtered_ab12.sampled.jsonl")),
            "github"
        );
        assert_eq!(
            source(&format!("{v1}/stackexchange/stackexchange.jsonl")),
            "stackexchange"
        );
        assert_eq!(source(&format!("{v1}/wikipedia/wiki.jsonl")), "wikipedia");
        assert_eq!(source(&format!("{v1}/book/book.jsonl")), "book");
        let cc = "common_crawl/2023-06/en_head_0000.json.gz.dedup.classifier.jsonl.zst";
        assert_eq!(source(&format!("{v1}/{cc}")), "common_crawl");
        assert_eq!(source("flan/cot_zsopt_data/part.0.parquet"), "cot_zsopt");
        assert_eq!(source("flan/cot_zs_opt_train.jsonl.gz"), "cot_zsopt");
        assert_eq!(source("x/t0_fs_noopt_train.jsonl.gz"), "t0_fsnoopt");
        assert_eq!(source("flan/extra/mixed.parquet"), "flan");
        assert_eq!(source("/home/me/github/proj/data/mine.jsonl"), "mine");
    }

    /// Every FLAN 2022 export, Parquet folder or JSONL file, names its source
    /// `<collection>_<zs|fs><opt|noopt>`: the part before the first `_` is the collection a
    /// finetuning mixture weighs (`flan`, `t0`, `niv2`, `cot`, `dialog`).
    #[test]
    fn published_flan_exports_name_their_collection_first() {
        for collection in ["flan", "t0", "niv2", "cot", "dialog"] {
            for (shots, options) in [
                ("zs", "opt"),
                ("zs", "noopt"),
                ("fs", "opt"),
                ("fs", "noopt"),
            ] {
                let want = format!("{collection}_{shots}{options}");
                let parquet = format!("FLAN/{want}_data/part.3.parquet");
                let jsonl = format!("flan_v2/{collection}_{shots}_{options}_train.jsonl.gz");
                for path in [parquet, jsonl] {
                    let found = source(&path);
                    assert_eq!(found, want, "{path}");
                    assert_eq!(found.split('_').next(), Some(collection), "{path}");
                }
            }
        }
    }

    #[test]
    fn symlink_loops_are_walked_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("arxiv")).unwrap();
        std::fs::write(
            dir.path().join("arxiv/arxiv_1.jsonl"),
            "{\"text\": \"x\"}\n",
        )
        .unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(dir.path(), dir.path().join("arxiv/loop")).unwrap();
        let files = discover(&[dir.path().to_owned()], FormatHint::Auto).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(&*files[0].display, "arxiv/arxiv_1.jsonl");
    }

    #[test]
    fn data_file_names() {
        assert!(is_data_file(
            "en_head_0000.json.gz.dedup.classifier.jsonl.zst"
        ));
        assert!(is_data_file("cot_zs_opt_train.jsonl.gz"));
        assert!(is_data_file("part.0.parquet"));
        assert!(!is_data_file("README.md"));
        assert!(!is_data_file("tokenizer.json"));
        assert!(!is_data_file("model.tar.gz"));
    }
}
