//! What a path's name says: the source name of an input file and the corpus it belongs to.
//!
//! For RedPajama the subset folder is the source (`arxiv`, `common_crawl`, ...). For FLAN the
//! submix is the source (`cot_zsopt` for both `cot_zsopt_data/part.0.parquet` and
//! `cot_zs_opt_train.jsonl.gz`), so per-source counts show the mixture; anything else under a
//! `flan` folder is `flan`.

use std::path::Path;

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
