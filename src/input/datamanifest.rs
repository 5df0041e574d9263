//! Data manifests: a TOML or JSON description of a corpus's files, as for RedPajama's published
//! `urls.txt` and checksum lists, resolved against a local root directory.
//!
//! A manifest lists `files` (relative path, optional size and sha256, source/subset) and/or
//! `subsets` (a glob pattern with the published file count). Listed files must exist and match
//! their size and sha256 when given, because a truncated download otherwise shows up much later
//! as a puzzling `truncated_file` reject. Subsets only report how many of the published files
//! are present, since working from a partial download is normal. See `data-manifests/*.toml`.
//!
//! `redpack fetch` downloads what a manifest lists (see [`crate::fetch`]): each `files` entry
//! from its `url`, else `url_prefix` + `path`, and each URL in a subset's `urls_file`. Building
//! a corpus ignores both fields.
//!
//! ```toml
//! name = "sample"
//! format = "redpajama"          # optional: redpajama | flan | auto
//! url_prefix = "https://..."    # optional: where `path`s are published
//! [[subsets]]
//! name = "arxiv"
//! pattern = "arxiv/arxiv_*.jsonl"
//! files = 100
//! urls_file = "urls/arxiv.txt"  # optional, for fetch: one URL a line, relative to this file
//! [[files]]
//! path = "arxiv/arxiv_sample.jsonl"
//! size = 1234
//! sha256 = "..."                # optional
//! source = "arxiv"              # optional, else the subset's `source`, else from the path
//! url = "https://..."           # optional, for fetch: else `url_prefix` + `path`
//! ```

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{detect_format, source_from_path, FormatHint, InputError, InputFile};

/// A corpus description; see the module docs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataManifest {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub format: Option<FormatHint>,
    /// Where the files are published; `url_prefix` + `path` is a file's URL.
    #[serde(default)]
    pub url_prefix: Option<String>,
    #[serde(default)]
    pub subsets: Vec<Subset>,
    #[serde(default)]
    pub files: Vec<ManifestFile>,
}

/// A group of files found by a glob pattern relative to the root.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subset {
    pub name: String,
    pub pattern: String,
    /// Number of files as published, when known.
    #[serde(default)]
    pub files: Option<u64>,
    #[serde(default)]
    pub format: Option<FormatHint>,
    /// Source name for its files; by default it comes from each file's path (see
    /// [`source_from_path`]), which gives the subset name for the RedPajama layout.
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub note: Option<String>,
    /// A published list of this subset's URLs, one a line (RedPajama's `urls/{subset}.txt`),
    /// relative to the manifest file; `redpack fetch` downloads them. Not used by builds.
    #[serde(default)]
    pub urls_file: Option<String>,
}

/// One listed file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    pub path: String,
    #[serde(default)]
    pub size: Option<u64>,
    /// Lowercase hex sha256; empty means unknown.
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub subset: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    /// Where `redpack fetch` downloads it from; default `url_prefix` + `path`.
    #[serde(default)]
    pub url: Option<String>,
}

/// What resolving found for one subset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubsetCoverage {
    pub name: String,
    pub expected: Option<u64>,
    pub found: u64,
}

/// The files to read, in manifest order (listed files, then each subset's matches sorted), and
/// how complete each subset is.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub files: Vec<InputFile>,
    pub subsets: Vec<SubsetCoverage>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid data manifest: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: listed in the data manifest but missing under the root directory")]
    MissingFile { path: PathBuf },
    #[error("{path}: size mismatch: the manifest says {expected} bytes, the file has {actual}; the download is incomplete or a different version")]
    SizeMismatch {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("{path}: sha256 mismatch: the manifest says {expected}, the file hashes to {actual}; the file is corrupt or a different version, download it again")]
    ChecksumMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{path}: sha256 {value:?} in the data manifest is not 64 hex digits")]
    BadChecksum { path: PathBuf, value: String },
    #[error("subset {subset}: invalid pattern {pattern:?}: {message}")]
    BadPattern {
        subset: String,
        pattern: String,
        message: String,
    },
    #[error("the data manifest matched no files under {root}")]
    NoFiles { root: PathBuf },
    #[error(transparent)]
    Detect(Box<InputError>),
}

impl DataManifest {
    /// Reads a manifest; `.json` files are JSON (an object as above, or a bare list of files),
    /// anything else TOML.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Io {
            path: path.to_owned(),
            source,
        })?;
        let parse_error = |message: String| ManifestError::Parse {
            path: path.to_owned(),
            message,
        };
        if path.extension().is_some_and(|e| e == "json") {
            #[derive(Deserialize)]
            #[serde(untagged)]
            enum JsonForm {
                Full(DataManifest),
                List(Vec<ManifestFile>),
            }
            match serde_json::from_str::<JsonForm>(&text).map_err(|e| parse_error(e.to_string()))? {
                JsonForm::Full(manifest) => Ok(manifest),
                JsonForm::List(files) => Ok(DataManifest {
                    files,
                    ..DataManifest::default()
                }),
            }
        } else {
            toml::from_str(&text).map_err(|e| parse_error(e.to_string()))
        }
    }

    /// Finds the manifest's files under `root`, checking sizes and, if `verify_checksums`,
    /// sha256 sums. `hint` applies where the manifest gives no format.
    pub fn resolve(
        &self,
        root: &Path,
        hint: FormatHint,
        verify_checksums: bool,
    ) -> Result<Resolved, ManifestError> {
        let default_hint = self.format.unwrap_or(hint);
        let mut files = Vec::new();
        let mut seen = HashSet::new();
        for entry in &self.files {
            let path = root.join(&entry.path);
            if !path.is_file() {
                return Err(ManifestError::MissingFile { path });
            }
            verify_file(
                &path,
                entry.size,
                entry.sha256.as_deref().filter(|s| !s.is_empty()),
                verify_checksums,
            )?;
            let subset = entry
                .subset
                .as_deref()
                .and_then(|name| self.subsets.iter().find(|s| s.name == name));
            let source = entry
                .source
                .clone()
                .or_else(|| subset.and_then(|s| s.source.clone()));
            let hint = subset.and_then(|s| s.format).unwrap_or(default_hint);
            seen.insert(path.clone());
            let mut file = input_file(path, &entry.path, source, hint)?;
            if verify_checksums {
                file.sha256 = entry
                    .sha256
                    .as_deref()
                    .filter(|s| !s.is_empty())
                    .map(|s| Arc::from(s.to_ascii_lowercase()));
            }
            files.push(file);
        }
        let mut coverage = Vec::new();
        for subset in &self.subsets {
            let pattern = root.join(&subset.pattern).to_string_lossy().into_owned();
            let bad_pattern = |message: String| ManifestError::BadPattern {
                subset: subset.name.clone(),
                pattern: subset.pattern.clone(),
                message,
            };
            let matches = glob::glob(&pattern).map_err(|e| bad_pattern(e.to_string()))?;
            let mut found = 0;
            for matched in matches {
                let path = matched.map_err(|e| ManifestError::Io {
                    path: e.path().to_owned(),
                    source: e.into(),
                })?;
                if !path.is_file() {
                    continue;
                }
                found += 1;
                if !seen.insert(path.clone()) {
                    continue;
                }
                let display = path
                    .strip_prefix(root)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .replace('\\', "/");
                let hint = subset.format.unwrap_or(default_hint);
                files.push(input_file(path, &display, subset.source.clone(), hint)?);
            }
            coverage.push(SubsetCoverage {
                name: subset.name.clone(),
                expected: subset.files,
                found,
            });
        }
        if files.is_empty() {
            return Err(ManifestError::NoFiles {
                root: root.to_owned(),
            });
        }
        Ok(Resolved {
            files,
            subsets: coverage,
        })
    }
}

fn input_file(
    path: PathBuf,
    display: &str,
    source: Option<String>,
    hint: FormatHint,
) -> Result<InputFile, ManifestError> {
    let format = detect_format(&path, hint).map_err(|e| ManifestError::Detect(Box::new(e)))?;
    let source = source.unwrap_or_else(|| source_from_path(&path));
    Ok(InputFile {
        display: Arc::from(display),
        source: Arc::from(source),
        path,
        format,
        sha256: None,
    })
}

/// Checks a file's size and (when `check_sha256`) its sha256 against expected values.
pub fn verify_file(
    path: &Path,
    size: Option<u64>,
    sha256: Option<&str>,
    check_sha256: bool,
) -> Result<(), ManifestError> {
    let io = |source| ManifestError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(expected) = size {
        let actual = std::fs::metadata(path).map_err(io)?.len();
        if actual != expected {
            return Err(ManifestError::SizeMismatch {
                path: path.to_owned(),
                expected,
                actual,
            });
        }
    }
    if let (Some(expected), true) = (sha256, check_sha256) {
        let expected = expected.to_ascii_lowercase();
        if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ManifestError::BadChecksum {
                path: path.to_owned(),
                value: expected,
            });
        }
        let actual = sha256_file(path)?;
        if actual != expected {
            return Err(ManifestError::ChecksumMismatch {
                path: path.to_owned(),
                expected,
                actual,
            });
        }
    }
    Ok(())
}

/// Lowercase hex sha256 of a file, read in 1 MiB chunks.
pub fn sha256_file(path: &Path) -> Result<String, ManifestError> {
    let io = |source| ManifestError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_manifests_may_be_a_bare_file_list() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.jsonl"), "{\"text\": \"x\"}\n").unwrap();
        let list = r#"[{"path": "a.jsonl", "size": 14, "sha256": "", "source": "mine"}]"#;
        let path = dir.path().join("m.json");
        std::fs::write(&path, list).unwrap();
        let manifest = DataManifest::load(&path).unwrap();
        let resolved = manifest
            .resolve(dir.path(), FormatHint::Auto, true)
            .unwrap();
        assert_eq!(&*resolved.files[0].source, "mine");
        assert_eq!(&*resolved.files[0].display, "a.jsonl");
    }

    #[test]
    fn subsets_report_coverage_and_missing_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("arxiv")).unwrap();
        std::fs::write(
            dir.path().join("arxiv/arxiv_1.jsonl"),
            "{\"text\": \"x\"}\n",
        )
        .unwrap();
        let text =
            "[[subsets]]\nname = \"arxiv\"\npattern = \"arxiv/arxiv_*.jsonl\"\nfiles = 100\n";
        let manifest: DataManifest = toml::from_str(text).unwrap();
        let resolved = manifest
            .resolve(dir.path(), FormatHint::Auto, false)
            .unwrap();
        assert_eq!(
            resolved.subsets[0],
            SubsetCoverage {
                name: "arxiv".into(),
                expected: Some(100),
                found: 1
            }
        );
        assert_eq!(&*resolved.files[0].source, "arxiv");
        let text = "[[files]]\npath = \"gone.jsonl\"\n";
        let manifest: DataManifest = toml::from_str(text).unwrap();
        let err = manifest
            .resolve(dir.path(), FormatHint::Auto, false)
            .unwrap_err();
        assert!(
            matches!(err, ManifestError::MissingFile { .. })
                && err.to_string().contains("gone.jsonl")
        );
    }
}
