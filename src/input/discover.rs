//! Turns the `--input` paths (files, directories, globs) into an ordered list of input files.
//!
//! Order is what makes outputs reproducible: files come in the order the paths were given;
//! a directory contributes its data files recursively in byte-wise sorted order; a glob its
//! matches in the glob crate's (sorted) order. A file reached twice is read once, at its first
//! place. Inside directories only data files are taken (`.jsonl`, `.parquet`, and
//! `.zst`/`.zstd`/`.gz` whose name contains `.json`), so READMEs, checksum lists, `tokenizer.json`
//! files and hidden files next to the data are skipped; a file named explicitly is always taken.
//!
//! Source names come from the path (see [`source_from_path`]). For FLAN the submix is the
//! source (`cot_zsopt` for both `cot_zsopt_data/part.0.parquet` and
//! `cot_zs_opt_train.jsonl.gz`), so per-source counts show the mixture; anything else under a
//! `flan` folder is `flan`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{detect_format, FormatHint, InputError, InputFile};

/// RedPajama V1 subset folder names, which are also the source names.
pub const REDPAJAMA_SUBSETS: [&str; 7] = [
    "arxiv",
    "c4",
    "common_crawl",
    "github",
    "stackexchange",
    "wikipedia",
    "book",
];

/// Which corpus a path belongs to, when its name says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    RedPajama,
    Flan,
}

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

/// The source name of a file: its RedPajama subset (`arxiv`, `common_crawl`, ...), its FLAN
/// submix (`cot_zsopt`), `flan` for other files under a `flan` folder, or else the file name up
/// to its first dot. Callers may override it from config.
pub fn source_from_path(path: &Path) -> String {
    if let Some((source, _)) = classify_path(path) {
        return source;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.split('.').next().unwrap_or("").to_owned()
}

/// Source name and corpus family from well-known names: the file name first (the most
/// specific), then the two nearest folders (so a `github` folder far up a user's home path
/// does not make everything GitHub).
pub fn classify_path(path: &Path) -> Option<(String, Family)> {
    let name = path.file_name()?.to_string_lossy();
    if let Some(found) = classify_file_name(&name) {
        return Some(found);
    }
    let folders = path.parent()?.components().rev().take(2);
    for folder in folders {
        let folder = folder.as_os_str().to_string_lossy();
        if let Some(subset) = REDPAJAMA_SUBSETS.iter().find(|s| **s == folder) {
            return Some((subset.to_string(), Family::RedPajama));
        }
        if let Some(submix) = folder.strip_suffix("_data").filter(|s| is_submix(s)) {
            return Some((submix.to_owned(), Family::Flan));
        }
        if folder.eq_ignore_ascii_case("flan") {
            return Some(("flan".to_owned(), Family::Flan));
        }
    }
    None
}

fn classify_file_name(name: &str) -> Option<(String, Family)> {
    let redpajama = |s: &str| Some((s.to_owned(), Family::RedPajama));
    if name.starts_with("arxiv_") {
        return redpajama("arxiv");
    }
    if name.starts_with("c4-train.") {
        return redpajama("c4");
    }
    if name.starts_with("filtered_") && name.contains(".sampled.") {
        return redpajama("github");
    }
    if name.starts_with("en_head_") || name.starts_with("en_middle_") {
        return redpajama("common_crawl");
    }
    match name {
        "stackexchange.jsonl" => return redpajama("stackexchange"),
        "wiki.jsonl" => return redpajama("wikipedia"),
        "book.jsonl" => return redpajama("book"),
        _ => {}
    }
    // FLAN JSONL exports: `{task}_{zs|fs}_{opt|noopt}_train.jsonl[.gz]` -> `{task}_{zs|fs}{opt|noopt}`.
    let stem = name.split('.').next()?;
    let parts: Vec<&str> = stem.strip_suffix("_train")?.rsplitn(3, '_').collect();
    if let [options, shots, task] = parts[..] {
        let submix = format!("{task}_{shots}{options}");
        if is_submix(&submix) {
            return Some((submix, Family::Flan));
        }
    }
    None
}

/// `<task>_<zs|fs><opt|noopt>`, the FLAN submix naming.
fn is_submix(name: &str) -> bool {
    let Some((task, kind)) = name.rsplit_once('_') else {
        return false;
    };
    !task.is_empty() && ["zsopt", "zsnoopt", "fsopt", "fsnoopt"].contains(&kind)
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
