//! Fetching one file: skip it when it is already there and verifies, else download into
//! `NAME.part` (resuming with a Range request), verify size and sha256, fsync, rename.
//!
//! A file only ever appears under its final name once it has verified, so a crash or a failed
//! run leaves at most a `.part` file, which the next run resumes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use redpack_schemas::{atomic, SchemaError};
use sha2::{Digest, Sha256};

use super::plan::FetchItem;
use super::report::{FetchError, FileReport, Problem, Status};
use super::retry::{Failure, Kind};
use super::{FetchOptions, Observer};

/// Requests sent for one file at most, however many of them made progress.
const MAX_REQUESTS: u32 = 1000;
/// Bytes read from the response and written to disk at a time.
const CHUNK: usize = 256 << 10;

/// What is shared by the downloads of one run.
pub(crate) struct Fetcher<'a> {
    pub agent: &'a ureq::Agent,
    pub options: &'a FetchOptions,
    pub dir: &'a Path,
    pub observer: &'a dyn Observer,
}

/// A file that was verified: its size and sha256.
struct Verified {
    size: u64,
    sha256: String,
}

/// Keeps the observer's byte count for one file equal to what its partial file holds.
struct Counted<'a> {
    observer: &'a dyn Observer,
    bytes: u64,
}

impl Counted<'_> {
    fn set(&mut self, bytes: u64) {
        if bytes > self.bytes {
            self.observer.bytes(bytes - self.bytes);
        } else if bytes < self.bytes {
            self.observer.discarded(self.bytes - bytes);
        }
        self.bytes = bytes;
    }

    fn add(&mut self, bytes: u64) {
        self.observer.bytes(bytes);
        self.bytes += bytes;
    }
}

impl Fetcher<'_> {
    pub fn fetch(&self, item: &FetchItem) -> FileReport {
        let target = self.dir.join(&item.path);
        let partial = partial_path(&target);
        let mut report = FileReport::new(item, Status::Downloaded);
        let fail = |report: FileReport, requests: u32, problem: Problem| {
            report.failed(FetchError {
                path: item.path.clone(),
                url: item.url.clone(),
                requests,
                problem,
            })
        };
        match check_present(item, &target) {
            Ok(Present::Absent) => {}
            Ok(Present::Fine { size, sha256 }) => {
                self.observer.bytes(size);
                report.status = Status::Skipped;
                report.size = Some(size);
                report.verified = item.size.is_some() || item.sha256.is_some();
                report.sha256 = sha256;
                return report;
            }
            Ok(Present::Bad { reason, truncated }) => {
                self.observer.note(&format!(
                    "{}: already present but {reason}; downloading it again",
                    item.path
                ));
                let moved = if truncated && !partial.exists() {
                    fs::rename(&target, &partial)
                } else {
                    fs::remove_file(&target)
                };
                if let Err(source) = moved {
                    return fail(
                        report,
                        0,
                        Problem::Io {
                            path: target,
                            source,
                        },
                    );
                }
                report.replaced = Some(reason);
            }
            Err(problem) => return fail(report, 0, problem),
        }
        if let Some(parent) = target.parent() {
            if let Err(source) = fs::create_dir_all(parent) {
                let path = parent.to_owned();
                return fail(report, 0, Problem::Io { path, source });
            }
        }
        let mut counted = Counted {
            observer: self.observer,
            bytes: 0,
        };
        let mut failures = 0u32;
        loop {
            report.requests = report.requests.saturating_add(1);
            let attempt = self.attempt(item, &partial, &mut counted, &mut report);
            let failure = match attempt.and_then(|verified| {
                publish(&partial, &target).map_err(Failure::permanent)?;
                Ok(verified)
            }) {
                Ok(verified) => {
                    report.size = Some(verified.size);
                    report.sha256 = Some(verified.sha256);
                    report.verified = true;
                    return report;
                }
                Err(failure) => failure,
            };
            failures = match failure.kind {
                Kind::Transient { progressed: true } => 1,
                Kind::Transient { progressed: false } | Kind::Restart => failures.saturating_add(1),
                Kind::Permanent => failures,
            };
            if failure.kind == Kind::Restart {
                if let Err(source) = remove_if_present(&partial) {
                    let requests = report.requests;
                    return fail(
                        report,
                        requests,
                        Problem::Io {
                            path: partial,
                            source,
                        },
                    );
                }
                counted.set(0);
            }
            let give_up = failure.kind == Kind::Permanent
                || failures > self.options.retries
                || report.requests >= MAX_REQUESTS.max(self.options.retries.saturating_add(1));
            if give_up {
                counted.set(0);
                let requests = report.requests;
                return fail(report, requests, failure.problem);
            }
            self.observer.note(&format!(
                "{}: {}; trying again ({} of {})",
                item.path, failure.problem, failures, self.options.retries
            ));
            std::thread::sleep(self.options.backoff.delay(failures));
        }
    }

    /// One request: continue the partial file from where it ends, then verify it.
    fn attempt(
        &self,
        item: &FetchItem,
        partial: &Path,
        counted: &mut Counted,
        report: &mut FileReport,
    ) -> Result<Verified, Failure> {
        let io = |source| {
            Failure::permanent(Problem::Io {
                path: partial.to_owned(),
                source,
            })
        };
        let existing = match fs::metadata(partial) {
            Ok(meta) => Some(meta.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(e)),
        };
        let mut offset = existing.unwrap_or(0);
        if item.size.is_some_and(|size| offset > size) {
            offset = 0;
        }
        counted.set(offset);
        if report.requests == 1 {
            report.resumed_from = offset;
        }
        if existing.is_some() && Some(offset) == item.size {
            report.requests -= 1;
            return verify(item, partial, None);
        }
        let mut request = self.agent.get(&item.url);
        if offset > 0 {
            request = request.header("Range", format!("bytes={offset}-"));
        }
        let response = request.call().map_err(Failure::transport)?;
        let code = response.status().as_u16();
        let content_range = response
            .headers()
            .get("content-range")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        match code {
            200 => {
                if offset > 0 {
                    // The server ignored the Range header and sends the whole file.
                    offset = 0;
                    counted.set(0);
                }
            }
            206 => {
                let header = content_range.unwrap_or_default();
                let (start, total) = parse_content_range(&header);
                if start != Some(offset) {
                    return Err(Failure::restart(Problem::ContentRange { offset, header }));
                }
                if let (Some(total), Some(expected)) = (total, item.size) {
                    if total != expected {
                        let problem = Problem::SizeMismatch {
                            expected,
                            actual: total,
                        };
                        return Err(Failure::restart(problem));
                    }
                }
            }
            416 => {
                // Nothing from `offset` on: fine when the partial file is the whole file.
                let total = content_range
                    .as_deref()
                    .and_then(|h| parse_content_range(h).1);
                if offset > 0 && total == Some(offset) {
                    return verify(item, partial, None);
                }
                return Err(Failure::restart(Problem::Status(code)));
            }
            _ => return Err(Failure::status(code)),
        }
        let body = response.into_body();
        if let (Some(length), Some(expected)) = (body.content_length(), item.size) {
            let announced = offset.saturating_add(length);
            if announced != expected {
                let problem = Problem::SizeMismatch {
                    expected,
                    actual: announced,
                };
                return Err(Failure::restart(problem));
            }
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(partial)
            .map_err(io)?;
        file.set_len(offset).map_err(io)?;
        let mut hasher = Sha256::new();
        hash_prefix(&mut file, offset, &mut hasher).map_err(io)?;
        file.seek(SeekFrom::Start(offset)).map_err(io)?;
        let mut reader = body.into_reader();
        let mut buffer = vec![0u8; CHUNK];
        let mut written = offset;
        let mut received = 0u64;
        loop {
            let n = match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    report.bytes_received += received;
                    file.sync_data().map_err(io)?;
                    let problem = Problem::Transport(format!("reading the body: {e}"));
                    return Err(Failure::transient(problem, received > 0));
                }
            };
            file.write_all(&buffer[..n]).map_err(io)?;
            hasher.update(&buffer[..n]);
            written += n as u64;
            received += n as u64;
            counted.add(n as u64);
            if let Some(expected) = item.size.filter(|&size| written > size) {
                report.bytes_received += received;
                let problem = Problem::SizeMismatch {
                    expected,
                    actual: written,
                };
                return Err(Failure::restart(problem));
            }
        }
        report.bytes_received += received;
        file.sync_all().map_err(io)?;
        drop(file);
        verify(item, partial, Some(hex(&hasher.finalize())))
    }
}

enum Present {
    Absent,
    /// Verifies (or there is nothing to verify it against).
    Fine {
        size: u64,
        sha256: Option<String>,
    },
    /// Does not verify; `truncated` when it is shorter than listed, so it may be resumed.
    Bad {
        reason: String,
        truncated: bool,
    },
}

fn check_present(item: &FetchItem, target: &Path) -> Result<Present, Problem> {
    let io = |source| Problem::Io {
        path: target.to_owned(),
        source,
    };
    let meta = match fs::metadata(target) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Present::Absent),
        Err(e) => return Err(io(e)),
    };
    if !meta.is_file() {
        let error = io::Error::new(io::ErrorKind::AlreadyExists, "exists and is not a file");
        return Err(io(error));
    }
    let size = meta.len();
    if let Some(expected) = item.size.filter(|&expected| expected != size) {
        return Ok(Present::Bad {
            reason: format!("has {size} bytes where the manifest says {expected}"),
            truncated: size < expected,
        });
    }
    let Some(expected) = &item.sha256 else {
        return Ok(Present::Fine { size, sha256: None });
    };
    let actual = hash_file(target).map_err(io)?;
    if &actual != expected {
        return Ok(Present::Bad {
            reason: format!("its sha256 is {actual} where the manifest says {expected}"),
            truncated: false,
        });
    }
    Ok(Present::Fine {
        size,
        sha256: Some(actual),
    })
}

/// Checks the finished partial file's size and sha256 (`digest` when already computed).
fn verify(item: &FetchItem, partial: &Path, digest: Option<String>) -> Result<Verified, Failure> {
    let io = |source| {
        Failure::permanent(Problem::Io {
            path: partial.to_owned(),
            source,
        })
    };
    let size = fs::metadata(partial).map_err(io)?.len();
    if let Some(expected) = item.size.filter(|&expected| expected != size) {
        return Err(Failure::restart(Problem::SizeMismatch {
            expected,
            actual: size,
        }));
    }
    let actual = match digest {
        Some(digest) => digest,
        None => hash_file(partial).map_err(io)?,
    };
    if let Some(expected) = item.sha256.as_ref().filter(|&expected| *expected != actual) {
        let problem = Problem::ChecksumMismatch {
            expected: expected.clone(),
            actual,
        };
        return Err(Failure::restart(problem));
    }
    Ok(Verified {
        size,
        sha256: actual,
    })
}

/// Moves a verified partial file to its final name, durably.
fn publish(partial: &Path, target: &Path) -> Result<(), Problem> {
    atomic::commit(partial, target).map_err(|err| match err {
        SchemaError::Io { path, source } => Problem::Io { path, source },
        other => Problem::Io {
            path: target.to_owned(),
            source: io::Error::other(other),
        },
    })
}

/// `NAME.part` next to `target`.
pub fn partial_path(target: &Path) -> PathBuf {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    target.with_file_name(name)
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Feeds the first `length` bytes of `file` to `hasher` (the part kept from earlier requests).
fn hash_prefix(file: &mut File, length: u64, hasher: &mut Sha256) -> io::Result<()> {
    file.seek(SeekFrom::Start(0))?;
    let mut prefix = Read::by_ref(file).take(length);
    let mut buffer = vec![0u8; CHUNK];
    loop {
        let n = prefix.read(&mut buffer)?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buffer[..n]);
    }
}

/// Lowercase hex sha256 of a whole file.
fn hash_file(path: &Path) -> io::Result<String> {
    let mut hasher = Sha256::new();
    hash_prefix(&mut File::open(path)?, u64::MAX, &mut hasher)?;
    Ok(hex(&hasher.finalize()))
}

/// `bytes START-END/TOTAL` (or `bytes */TOTAL`) → (START, TOTAL), each when present and valid.
fn parse_content_range(header: &str) -> (Option<u64>, Option<u64>) {
    let Some(rest) = header.trim().strip_prefix("bytes") else {
        return (None, None);
    };
    let (range, total) = rest.trim().split_once('/').unwrap_or((rest.trim(), "*"));
    let start = range.split('-').next().and_then(|s| s.trim().parse().ok());
    (start, total.trim().parse().ok())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_parse() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            (Some(100), Some(200))
        );
        assert_eq!(parse_content_range("bytes */200"), (None, Some(200)));
        assert_eq!(parse_content_range("bytes 5-9/*"), (Some(5), None));
        assert_eq!(parse_content_range("items 1-2/3"), (None, None));
    }

    #[test]
    fn partial_files_sit_next_to_the_target() {
        let path = partial_path(Path::new("out/arxiv/a.jsonl"));
        assert_eq!(path, Path::new("out/arxiv/a.jsonl.part"));
    }
}
