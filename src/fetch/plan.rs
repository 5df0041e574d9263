//! What to download: a data manifest's files (and its subsets' URL lists) turned into a flat
//! list of [`FetchItem`]s, each with a URL, a safe relative local path and what to verify.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use crate::input::datamanifest::{DataManifest, Subset};

/// One file to download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchItem {
    /// Relative path under the output directory, `/`-separated.
    pub path: String,
    pub url: String,
    pub size: Option<u64>,
    /// Lowercase hex sha256, when the manifest lists one.
    pub sha256: Option<String>,
    /// The subset it belongs to: its `subset` field, or the subset whose URL list or pattern
    /// named it.
    pub subset: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{path}: cannot read the URL list of subset {subset}: {source}")]
    UrlsFile {
        subset: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no URL: the entry has no `url` and the data manifest no `url_prefix`")]
    NoUrl { path: String },
    #[error("{url}: not an http(s) URL ({place})")]
    BadUrl { url: String, place: String },
    #[error("{path:?}: not a safe relative path (from {url}); paths must stay below the output directory")]
    UnsafePath { path: String, url: String },
    #[error("{path}: sha256 {value:?} in the data manifest is not 64 hex digits")]
    BadChecksum { path: String, value: String },
    #[error("--only {name}: no such subset; the manifest has: {known}")]
    UnknownSubset { name: String, known: String },
    #[error("nothing to download: the data manifest lists no files{}", if *.filtered { " in the chosen subsets" } else { "" })]
    Empty { filtered: bool },
}

/// The files `manifest` lists, in order: `files` entries, then each subset's `urls_file` lines.
/// `manifest_dir` is where `urls_file` paths are relative to. A path listed twice is fetched
/// once (the first entry wins). `only` keeps the files of those subsets (all when empty).
pub fn plan(
    manifest: &DataManifest,
    manifest_dir: &Path,
    only: &[String],
) -> Result<Vec<FetchItem>, PlanError> {
    check_subset_names(manifest, only)?;
    let prefix = manifest.url_prefix.as_deref();
    let mut items = Vec::new();
    for entry in &manifest.files {
        let url = match (&entry.url, prefix) {
            (Some(url), _) => url.clone(),
            (None, Some(prefix)) => join_url(prefix, &entry.path),
            (None, None) => {
                return Err(PlanError::NoUrl {
                    path: entry.path.clone(),
                })
            }
        };
        check_url(&url, &entry.path)?;
        let path = safe_path(&entry.path, &url)?;
        let sha256 = match entry.sha256.as_deref().filter(|s| !s.is_empty()) {
            Some(value) => Some(checksum(&path, value)?),
            None => None,
        };
        let subset = entry
            .subset
            .clone()
            .or_else(|| subset_by_pattern(&manifest.subsets, &path));
        items.push(FetchItem {
            path,
            url,
            size: entry.size,
            sha256,
            subset,
        });
    }
    for subset in &manifest.subsets {
        let Some(list) = &subset.urls_file else {
            continue;
        };
        let list_path = manifest_dir.join(list);
        let text = std::fs::read_to_string(&list_path).map_err(|source| PlanError::UrlsFile {
            subset: subset.name.clone(),
            path: list_path.clone(),
            source,
        })?;
        for (number, line) in text.lines().enumerate() {
            let url = line.trim();
            if url.is_empty() || url.starts_with('#') {
                continue;
            }
            let place = format!("{}:{}", list_path.display(), number + 1);
            check_url(url, &place)?;
            let path = safe_path(&local_path(url, prefix), url)?;
            items.push(FetchItem {
                path,
                url: url.to_owned(),
                size: None,
                sha256: None,
                subset: Some(subset.name.clone()),
            });
        }
    }
    let mut seen = HashSet::new();
    items.retain(|item| seen.insert(item.path.clone()));
    if !only.is_empty() {
        items.retain(|item| item.subset.as_ref().is_some_and(|s| only.contains(s)));
    }
    if items.is_empty() {
        return Err(PlanError::Empty {
            filtered: !only.is_empty(),
        });
    }
    Ok(items)
}

fn check_subset_names(manifest: &DataManifest, only: &[String]) -> Result<(), PlanError> {
    let mut known: Vec<&str> = manifest.subsets.iter().map(|s| s.name.as_str()).collect();
    known.extend(manifest.files.iter().filter_map(|f| f.subset.as_deref()));
    known.sort_unstable();
    known.dedup();
    match only.iter().find(|name| !known.contains(&name.as_str())) {
        Some(name) => Err(PlanError::UnknownSubset {
            name: name.clone(),
            known: if known.is_empty() {
                "(no subsets)".to_owned()
            } else {
                known.join(", ")
            },
        }),
        None => Ok(()),
    }
}

fn subset_by_pattern(subsets: &[Subset], path: &str) -> Option<String> {
    subsets
        .iter()
        .find(|s| glob::Pattern::new(&s.pattern).is_ok_and(|p| p.matches(path)))
        .map(|s| s.name.clone())
}

/// `prefix` + `path` with exactly one `/` between them.
pub fn join_url(prefix: &str, path: &str) -> String {
    format!(
        "{}/{}",
        prefix.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

/// Where a listed URL is stored: the URL less `prefix` when it starts with it, else the URL's
/// path (without query or fragment), percent-decoded.
pub fn local_path(url: &str, prefix: Option<&str>) -> String {
    let without_query = url.split(['?', '#']).next().unwrap_or(url);
    let relative = match prefix.and_then(|p| without_query.strip_prefix(p.trim_end_matches('/'))) {
        Some(rest) => rest,
        None => {
            let after_scheme = without_query
                .split_once("://")
                .map_or(without_query, |(_, rest)| rest);
            after_scheme.find('/').map_or("", |i| &after_scheme[i..])
        }
    };
    percent_decode(relative.trim_start_matches('/'))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((high * 16 + low) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn check_url(url: &str, place: &str) -> Result<(), PlanError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(PlanError::BadUrl {
            url: url.to_owned(),
            place: place.to_owned(),
        })
    }
}

/// `path` normalized to `/` separators, rejected unless it is relative and stays below the
/// output directory (no `..`, no root, no empty name).
fn safe_path(path: &str, url: &str) -> Result<String, PlanError> {
    let unsafe_path = || PlanError::UnsafePath {
        path: path.to_owned(),
        url: url.to_owned(),
    };
    let normalized = path.replace('\\', "/");
    if normalized.is_empty() || normalized.ends_with('/') || normalized.contains('\0') {
        return Err(unsafe_path());
    }
    let all_normal = Path::new(&normalized)
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !all_normal || normalized.starts_with('/') {
        return Err(unsafe_path());
    }
    Ok(normalized)
}

fn checksum(path: &str, value: &str) -> Result<String, PlanError> {
    let lower = value.to_ascii_lowercase();
    if lower.len() == 64 && lower.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(lower)
    } else {
        Err(PlanError::BadChecksum {
            path: path.to_owned(),
            value: value.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFIX: &str = "https://data.example/rp/v1.0.0/";

    fn manifest(text: &str) -> DataManifest {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn urls_files_become_items_below_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("arxiv.txt"),
            format!("{PREFIX}arxiv/arxiv_a.jsonl\n\n# comment\n{PREFIX}arxiv/arxiv_b.jsonl\nhttps://elsewhere.example/x/c%20d.jsonl?sig=1\n"),
        )
        .unwrap();
        let text = format!(
            "url_prefix = \"{PREFIX}\"\n\
             [[subsets]]\nname = \"arxiv\"\npattern = \"arxiv/*.jsonl\"\nurls_file = \"arxiv.txt\"\n\
             [[subsets]]\nname = \"book\"\npattern = \"book/*.jsonl\"\n\
             [[files]]\npath = \"book/book.jsonl\"\nsize = 3\nsha256 = \"{}\"\n\
             [[files]]\npath = \"arxiv/arxiv_a.jsonl\"\nurl = \"http://mirror.example/a\"\n",
            "AB".repeat(32)
        );
        let items = plan(&manifest(&text), dir.path(), &[]).unwrap();
        let paths: Vec<&str> = items.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "book/book.jsonl",
                "arxiv/arxiv_a.jsonl",
                "arxiv/arxiv_b.jsonl",
                "x/c d.jsonl"
            ]
        );
        assert_eq!(items[0].url, format!("{PREFIX}book/book.jsonl"));
        assert_eq!(items[0].sha256.as_deref(), Some("ab".repeat(32).as_str()));
        assert_eq!(items[0].subset.as_deref(), Some("book"));
        assert_eq!(items[1].url, "http://mirror.example/a");
        assert_eq!(items[1].subset.as_deref(), Some("arxiv"));
        assert_eq!(items[3].subset.as_deref(), Some("arxiv"));

        let only = plan(&manifest(&text), dir.path(), &["book".into()]).unwrap();
        assert_eq!(only.len(), 1);
        let err = plan(&manifest(&text), dir.path(), &["c4".into()]).unwrap_err();
        assert!(err.to_string().contains("arxiv, book"), "{err}");
    }

    #[test]
    fn paths_that_escape_the_output_directory_are_rejected() {
        for path in ["../x.jsonl", "/etc/passwd", "a/../../b", ""] {
            let text = format!("url_prefix = \"{PREFIX}\"\n[[files]]\npath = \"{path}\"\n");
            let err = plan(&manifest(&text), Path::new("."), &[]).unwrap_err();
            assert!(matches!(err, PlanError::UnsafePath { .. }), "{path}: {err}");
        }
        let text = "[[files]]\npath = \"a.jsonl\"\n";
        let err = plan(&manifest(text), Path::new("."), &[]).unwrap_err();
        assert!(matches!(err, PlanError::NoUrl { .. }), "{err}");
    }

    #[test]
    fn local_paths_come_from_the_url() {
        assert_eq!(
            local_path("https://h/a/b.txt", Some("https://h/a")),
            "b.txt"
        );
        assert_eq!(local_path("https://h/a/b.txt#x", None), "a/b.txt");
        assert_eq!(local_path("https://h", None), "");
        assert_eq!(local_path("https://h/%41%zz%4", None), "A%zz%4");
        assert_eq!(join_url("http://h/p/", "/x"), "http://h/p/x");
    }
}
