//! `redpack fetch` against a loopback HTTP/1.1 server written here: it serves generated
//! RedPajama- and FLAN-like files, honours Range, and can be told to drop connections midway,
//! answer 503, serve a corrupted body or ignore Range. A watcher thread checks throughout each
//! run that no file ever sits under its final name with content other than the published one.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use redpack::fetch::{
    fetch, partial_path, plan, Backoff, FetchOptions, FetchReport, Silent, Status,
};
use redpack::input::datamanifest::DataManifest;
use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_redpack");
const ZST: &str = "common_crawl/2023-06/en_head_0000.json.gz.dedup.classifier.jsonl.zst";
const GZ: &str = "flan/cot_zs_opt_train.jsonl.gz";
const LISTED: &str = "arxiv/arxiv_0001.jsonl";

/// Deterministic pseudo-random numbers (xorshift64*), so fixtures are the same every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn sentence(&mut self, words: usize) -> String {
        const SYLLABLES: [&str; 24] = [
            "ka", "to", "ri", "men", "sa", "lo", "ver", "qui", "na", "del", "por", "tes", "un",
            "gra", "bi", "sol", "ex", "tra", "mo", "fi", "re", "zu", "ang", "lis",
        ];
        let mut text = String::new();
        for i in 0..words {
            if i > 0 {
                text.push(' ');
            }
            for _ in 0..1 + self.next() % 3 {
                text.push_str(SYLLABLES[(self.next() % 24) as usize]);
            }
        }
        text.push('.');
        text
    }
}

/// A zstd-compressed RedPajama Common Crawl file of a few hundred KB.
fn redpajama_zst() -> Vec<u8> {
    let mut rng = Rng(0x5eed_2510_2662);
    let mut jsonl = String::new();
    for i in 0..400 {
        let text: Vec<String> = (0..8).map(|_| rng.sentence(60)).collect();
        let record = serde_json::json!({
            "text": text.join(" "),
            "pred_label": "__label__cc",
            "pred_label_prob": 0.5 + (rng.next() % 500) as f64 / 1000.0,
            "wiki_prob": (rng.next() % 1000) as f64 / 1000.0,
            "source": format!("cc/2023-06/en_head_0000.json.gz/line{i}"),
        });
        jsonl.push_str(&record.to_string());
        jsonl.push('\n');
    }
    zstd::encode_all(jsonl.as_bytes(), 3).unwrap()
}

/// A gzipped FLAN JSONL export of some tens of KB.
fn flan_gz() -> Vec<u8> {
    let mut rng = Rng(0x0f1a_2c07);
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    for _ in 0..300 {
        let record = serde_json::json!({
            "inputs": format!("Q: {} Let's think step by step.", rng.sentence(25)),
            "targets": rng.sentence(15),
            "task": "cot_gsm8k",
        });
        writeln!(encoder, "{record}").unwrap();
    }
    encoder.finish().unwrap()
}

/// A small plain RedPajama arXiv file.
fn arxiv_jsonl() -> Vec<u8> {
    let mut rng = Rng(0xa2c1);
    let record = serde_json::json!({"text": rng.sentence(200), "meta": {"arxiv_id": "2510.26622"}});
    format!("{record}\n").into_bytes()
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What the server does with one file's requests, counted from the first.
#[derive(Debug, Clone, Copy, Default)]
struct Script {
    /// The first this-many requests get `drop_after` body bytes, then the connection closes.
    drop_requests: usize,
    drop_after: usize,
    /// The first this-many requests get 503.
    unavailable: usize,
    /// The first this-many requests get a body with one byte changed.
    corrupt: usize,
    /// Answer every request with the whole file (200), whatever its Range header says.
    ignore_range: bool,
}

#[derive(Debug, Clone)]
struct Logged {
    path: String,
    range: Option<String>,
}

#[derive(Default)]
struct ServerState {
    files: HashMap<String, Vec<u8>>,
    scripts: HashMap<String, Script>,
    counts: HashMap<String, usize>,
    log: Vec<Logged>,
}

/// The loopback server. Its thread lives as long as the test process.
struct Server {
    port: u16,
    state: Arc<Mutex<ServerState>>,
}

impl Server {
    fn start(files: &[(&str, &[u8])]) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(ServerState::default()));
        {
            let mut state = state.lock().unwrap();
            for (path, body) in files {
                state.files.insert(format!("/rp/{path}"), body.to_vec());
            }
        }
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = Arc::clone(&shared);
                std::thread::spawn(move || serve(stream, &state));
            }
        });
        Server { port, state }
    }

    fn prefix(&self) -> String {
        format!("http://127.0.0.1:{}/rp/", self.port)
    }

    fn script(&self, path: &str, script: Script) {
        let mut state = self.state.lock().unwrap();
        state.scripts.insert(format!("/rp/{path}"), script);
    }

    fn log(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }

    fn requests_for(&self, path: &str) -> Vec<Option<String>> {
        let path = format!("/rp/{path}");
        self.log()
            .into_iter()
            .filter(|r| r.path == path)
            .map(|r| r.range)
            .collect()
    }
}

/// Answers one request on `stream`, then closes it.
fn serve(stream: TcpStream, state: &Mutex<ServerState>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_owned();
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_owned());
            }
        }
    }
    let (file, script, n) = {
        let mut state = state.lock().unwrap();
        state.log.push(Logged {
            path: path.clone(),
            range: range.clone(),
        });
        let count = state.counts.entry(path.clone()).or_insert(0);
        let n = *count;
        *count += 1;
        let script = state.scripts.get(&path).copied().unwrap_or_default();
        (state.files.get(&path).cloned(), script, n)
    };
    let mut stream = stream;
    let Some(mut body) = file else {
        return respond(&mut stream, "404 Not Found", &[], b"not here\n", None);
    };
    if n < script.unavailable {
        return respond(&mut stream, "503 Service Unavailable", &[], b"busy\n", None);
    }
    if n < script.corrupt {
        let middle = body.len() / 2;
        body[middle] ^= 0x55;
    }
    let start = range
        .as_deref()
        .filter(|_| !script.ignore_range)
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse::<usize>().ok());
    let cut = (n < script.drop_requests).then_some(script.drop_after);
    let total = body.len();
    match start {
        Some(start) if start >= total => {
            let header = format!("Content-Range: bytes */{total}");
            respond(
                &mut stream,
                "416 Range Not Satisfiable",
                &[&header],
                b"",
                None,
            )
        }
        Some(start) => {
            let header = format!("Content-Range: bytes {start}-{}/{total}", total - 1);
            respond(
                &mut stream,
                "206 Partial Content",
                &[&header],
                &body[start..],
                cut,
            )
        }
        None => respond(&mut stream, "200 OK", &[], &body, cut),
    }
}

/// Writes a response with a Content-Length; with `cut`, only that many body bytes, then the
/// connection drops.
fn respond(
    stream: &mut TcpStream,
    status: &str,
    headers: &[&str],
    body: &[u8],
    cut: Option<usize>,
) {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for header in headers {
        head.push_str(header);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let sent = cut.unwrap_or(body.len()).min(body.len());
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&body[..sent]);
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Both);
}

/// Polls the output directory while a run goes on and records every moment a file sits under
/// its final name with content other than the published one.
struct Watcher {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<String>>,
}

impl Watcher {
    fn start(dir: &Path, expected: &[(&str, &[u8])]) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let expected: Vec<(PathBuf, Vec<u8>)> = expected
            .iter()
            .map(|(path, body)| (dir.join(path), body.to_vec()))
            .collect();
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut violations = Vec::new();
            // A file a test put there on purpose is only watched once it has gone.
            let mut armed: Vec<bool> = expected.iter().map(|(path, _)| !path.exists()).collect();
            while !flag.load(Ordering::Relaxed) {
                for ((path, body), armed) in expected.iter().zip(&mut armed) {
                    match fs::read(path) {
                        Ok(found) if *armed && &found != body => violations.push(format!(
                            "{} holds {} bytes",
                            path.display(),
                            found.len()
                        )),
                        Ok(_) => {}
                        Err(_) => *armed = true,
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            violations
        });
        Watcher { stop, handle }
    }

    fn violations(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

/// The fixtures, a manifest listing them on `server`, and an output directory.
struct Setup {
    server: Server,
    dir: tempfile::TempDir,
    zst: Vec<u8>,
    gz: Vec<u8>,
    arxiv: Vec<u8>,
}

impl Setup {
    /// `extra` is TOML appended to the manifest (more `[[files]]`).
    fn new(extra: &str) -> Setup {
        let (zst, gz, arxiv) = (redpajama_zst(), flan_gz(), arxiv_jsonl());
        let server = Server::start(&[(ZST, &zst), (GZ, &gz), (LISTED, &arxiv)]);
        let dir = tempfile::tempdir().unwrap();
        let prefix = server.prefix();
        fs::write(
            dir.path().join("arxiv-urls.txt"),
            format!("{prefix}{LISTED}\n"),
        )
        .unwrap();
        let manifest = format!(
            "name = \"loopback\"\nurl_prefix = \"{prefix}\"\n\
             [[subsets]]\nname = \"common_crawl\"\npattern = \"common_crawl/*/*.jsonl.zst\"\n\
             [[subsets]]\nname = \"arxiv\"\npattern = \"arxiv/*.jsonl\"\nurls_file = \"arxiv-urls.txt\"\n\
             [[files]]\npath = \"{ZST}\"\nsize = {}\nsha256 = \"{}\"\n\
             [[files]]\npath = \"{GZ}\"\nsize = {}\nsha256 = \"{}\"\nsubset = \"flan\"\n{extra}",
            zst.len(),
            sha256(&zst),
            gz.len(),
            sha256(&gz),
        );
        fs::write(dir.path().join("manifest.toml"), manifest).unwrap();
        Setup {
            server,
            dir,
            zst,
            gz,
            arxiv,
        }
    }

    fn manifest_path(&self) -> PathBuf {
        self.dir.path().join("manifest.toml")
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    fn expected(&self) -> [(&'static str, &[u8]); 3] {
        [(ZST, &self.zst), (GZ, &self.gz), (LISTED, &self.arxiv)]
    }

    /// Runs the library's fetch with short delays and no proxy, watched.
    fn fetch(&self, only: &[&str]) -> FetchReport {
        let manifest = DataManifest::load(&self.manifest_path()).unwrap();
        let only: Vec<String> = only.iter().map(|s| s.to_string()).collect();
        let items = plan(&manifest, self.dir.path(), &only).unwrap();
        let options = FetchOptions {
            jobs: 3,
            retries: 3,
            backoff: Backoff {
                first: Duration::from_millis(1),
                max: Duration::from_millis(4),
            },
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(5),
            env_proxy: false,
        };
        let watcher = Watcher::start(&self.out(), &self.expected());
        let report = fetch(&items, &self.out(), &options, &Silent);
        let violations = watcher.violations();
        assert!(
            violations.is_empty(),
            "unverified files under final names: {violations:?}"
        );
        report
    }

    fn assert_arrived(&self, path: &str) {
        let (_, body) = self
            .expected()
            .into_iter()
            .find(|(p, _)| *p == path)
            .unwrap();
        let found = fs::read(self.out().join(path)).unwrap();
        assert!(
            found == body,
            "{path}: {} bytes differ from the {} served",
            found.len(),
            body.len()
        );
        assert!(
            !partial_path(&self.out().join(path)).exists(),
            "{path}: .part left"
        );
    }
}

fn status_of(report: &FetchReport, path: &str) -> Status {
    report.files.iter().find(|f| f.path == path).unwrap().status
}

#[test]
fn every_file_arrives_byte_identical_and_a_rerun_requests_nothing() {
    let setup = Setup::new("");
    assert!(
        setup.zst.len() > 200_000,
        "fixture of {} bytes",
        setup.zst.len()
    );
    let report = setup.fetch(&[]);
    assert_eq!(
        (report.downloaded, report.skipped, report.failed),
        (3, 0, 0),
        "{report:#?}"
    );
    for path in [ZST, GZ, LISTED] {
        setup.assert_arrived(path);
    }
    let total = (setup.zst.len() + setup.gz.len() + setup.arxiv.len()) as u64;
    assert_eq!(report.bytes_received, total);
    let listed = report.files.iter().find(|f| f.path == LISTED).unwrap();
    assert_eq!(
        listed.sha256.as_deref(),
        Some(sha256(&setup.arxiv).as_str())
    );

    let requests = setup.server.log().len();
    let again = setup.fetch(&[]);
    assert_eq!(setup.server.log().len(), requests, "a rerun sent requests");
    assert_eq!(
        (again.downloaded, again.skipped, again.bytes_received),
        (0, 3, 0)
    );
    let listed = again.files.iter().find(|f| f.path == LISTED).unwrap();
    assert!(
        !listed.verified,
        "nothing listed to verify the URL-list file against"
    );
    assert!(again
        .files
        .iter()
        .filter(|f| f.path != LISTED)
        .all(|f| f.verified));
}

#[test]
fn a_dropped_connection_resumes_with_a_range_request() {
    let setup = Setup::new("");
    setup.server.script(
        ZST,
        Script {
            drop_requests: 2,
            drop_after: 70_000,
            ..Script::default()
        },
    );
    let report = setup.fetch(&["common_crawl"]);
    assert_eq!(report.files.len(), 1);
    setup.assert_arrived(ZST);
    let ranges = setup.server.requests_for(ZST);
    assert_eq!(
        ranges,
        [
            None,
            Some("bytes=70000-".into()),
            Some("bytes=140000-".into())
        ]
    );
    let file = &report.files[0];
    assert_eq!(
        (file.requests, file.bytes_received),
        (3, setup.zst.len() as u64)
    );
}

#[test]
fn a_server_that_ignores_range_makes_the_download_start_over() {
    let setup = Setup::new("");
    setup.server.script(
        ZST,
        Script {
            drop_requests: 1,
            drop_after: 50_000,
            ignore_range: true,
            ..Script::default()
        },
    );
    let report = setup.fetch(&["common_crawl"]);
    setup.assert_arrived(ZST);
    assert_eq!(
        setup.server.requests_for(ZST),
        [None, Some("bytes=50000-".into())]
    );
    assert_eq!(
        report.files[0].bytes_received,
        50_000 + setup.zst.len() as u64
    );
}

#[test]
fn a_corrupted_body_is_detected_and_fetched_again() {
    let setup = Setup::new("");
    let once = Script {
        corrupt: 1,
        ..Script::default()
    };
    setup.server.script(ZST, once);
    setup.server.script(GZ, once);
    let report = setup.fetch(&[]);
    assert_eq!(report.failed, 0, "{report:#?}");
    for path in [ZST, GZ] {
        setup.assert_arrived(path);
        assert_eq!(
            setup.server.requests_for(path),
            [None, None],
            "{path}: from zero again"
        );
    }
}

#[test]
fn a_permanently_corrupted_file_fails_by_name_while_the_others_arrive() {
    let setup = Setup::new("");
    let always = Script {
        corrupt: usize::MAX,
        ..Script::default()
    };
    setup.server.script(GZ, always);
    let report = setup.fetch(&[]);
    assert_eq!((report.downloaded, report.failed), (2, 1), "{report:#?}");
    setup.assert_arrived(ZST);
    setup.assert_arrived(LISTED);
    let failed = report.failures().next().unwrap();
    let error = failed.error.as_deref().unwrap();
    assert!(
        error.contains(GZ) && error.contains(&format!("{}{GZ}", setup.server.prefix())),
        "{error}"
    );
    assert!(
        error.contains("sha256 mismatch") && error.contains("4 requests"),
        "{error}"
    );
    let target = setup.out().join(GZ);
    assert!(!target.exists() && !partial_path(&target).exists());
}

#[test]
fn a_503_is_retried_and_a_404_is_not() {
    let setup = Setup::new("[[files]]\npath = \"c4/gone.jsonl\"\nsize = 10\n");
    setup.server.script(
        GZ,
        Script {
            unavailable: 1,
            ..Script::default()
        },
    );
    let report = setup.fetch(&[]);
    setup.assert_arrived(GZ);
    assert_eq!(setup.server.requests_for(GZ).len(), 2);
    let gone = report
        .files
        .iter()
        .find(|f| f.path == "c4/gone.jsonl")
        .unwrap();
    assert_eq!((gone.status, gone.requests), (Status::Failed, 1));
    assert!(gone.error.as_deref().unwrap().contains("HTTP status 404"));
    assert!(!setup.out().join("c4/gone.jsonl").exists());
}

#[test]
fn a_partial_file_is_resumed_and_a_bad_present_file_replaced() {
    let setup = Setup::new("");
    let zst_target = setup.out().join(ZST);
    fs::create_dir_all(zst_target.parent().unwrap()).unwrap();
    fs::write(partial_path(&zst_target), &setup.zst[..1000]).unwrap();
    let gz_target = setup.out().join(GZ);
    fs::create_dir_all(gz_target.parent().unwrap()).unwrap();
    let mut wrong = setup.gz.clone();
    wrong[10] ^= 1;
    fs::write(&gz_target, &wrong).unwrap();

    let report = setup.fetch(&["common_crawl", "flan"]);
    assert_eq!(report.downloaded, 2, "{report:#?}");
    setup.assert_arrived(ZST);
    setup.assert_arrived(GZ);
    assert_eq!(setup.server.requests_for(ZST), [Some("bytes=1000-".into())]);
    let zst = &report.files[0];
    assert_eq!(
        (zst.resumed_from, zst.bytes_received),
        (1000, setup.zst.len() as u64 - 1000)
    );
    let gz = report.files.iter().find(|f| f.path == GZ).unwrap();
    assert!(gz.replaced.as_deref().unwrap().contains("sha256"), "{gz:?}");
    assert_eq!(status_of(&report, GZ), Status::Downloaded);
}

#[test]
fn the_command_reports_failures_in_json_and_exits_non_zero() {
    let setup = Setup::new("");
    setup.server.script(
        GZ,
        Script {
            corrupt: usize::MAX,
            ..Script::default()
        },
    );
    let mut command = Command::new(BIN);
    command
        .args(["fetch", "--manifest"])
        .arg(setup.manifest_path())
        .arg("--out")
        .arg(setup.out())
        .args([
            "--jobs",
            "2",
            "--retries",
            "1",
            "--retry-delay-ms",
            "1",
            "--json",
        ]);
    for proxy in ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"] {
        command.env_remove(proxy);
    }
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("1 of 3 files failed: {GZ}")),
        "{stderr}"
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        (report["downloaded"].as_u64(), report["failed"].as_u64()),
        (Some(2), Some(1))
    );
    let failed = report["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["status"] == "failed")
        .unwrap();
    assert_eq!(failed["path"], GZ);
    assert!(failed["error"]
        .as_str()
        .unwrap()
        .contains("sha256 mismatch"));
    setup.assert_arrived(ZST);

    let output = Command::new(BIN)
        .args(["fetch", "--manifest"])
        .arg(setup.manifest_path())
        .arg("--out")
        .arg(setup.out())
        .args(["--only", "c4"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr.contains("--only c4: no such subset"), "{stderr}");
}
