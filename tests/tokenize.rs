//! The fast encoder against the `tokenizers` crate: identical ids on every fixture tokenizer,
//! tokenizers trained here (`Metaspace` BPE in several settings, byte-level BPE as
//! `train-tokenizer` writes it) and variants of the fixtures (the Llama 3 split pattern,
//! `add_prefix_space`), on the fixture corpora, generated Unicode and edge cases; plus long
//! documents cut into pieces.
//!
//! `REDPACK_TOKENIZE_PROPTEST_SECS` (default 2) sets how long the randomized comparison runs.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use redpack::tokenize::DocTokenizer;
use serde_json::Value;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::{AddedToken, Tokenizer};

fn fixture(relative: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures")).join(relative)
}

fn jsonl_texts(text: &str, fields: &[&str]) -> Vec<String> {
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .flat_map(|v| {
            fields
                .iter()
                .filter_map(|f| v[*f].as_str().map(str::to_string))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Every text of the fixture corpora: arXiv, Common Crawl, FLAN inputs and targets.
fn corpus() -> &'static [String] {
    static CORPUS: OnceLock<Vec<String>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let arxiv = std::fs::read_to_string(fixture("redpajama/arxiv/arxiv_sample.jsonl")).unwrap();
        let mut cc = Vec::new();
        std::fs::File::open(fixture(
            "redpajama/common_crawl/2020-16/en_head_0091.json.gz.dedup.classifier.jsonl.zst",
        ))
        .unwrap()
        .read_to_end(&mut cc)
        .unwrap();
        let cc = String::from_utf8(zstd::decode_all(&cc[..]).unwrap()).unwrap();
        let mut flan = String::new();
        flate2::read::GzDecoder::new(
            std::fs::File::open(fixture("flan/cot_zs_opt_train.jsonl.gz")).unwrap(),
        )
        .read_to_string(&mut flan)
        .unwrap();
        let mut texts = jsonl_texts(&arxiv, &["text"]);
        texts.extend(jsonl_texts(&cc, &["text"]));
        texts.extend(jsonl_texts(&flan, &["inputs", "targets"]));
        assert!(texts.len() > 800, "{} texts", texts.len());
        texts
    })
}

fn load(name: &str, json: Vec<u8>) -> DocTokenizer {
    DocTokenizer::from_bytes(Path::new(name), json, None, None)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn edit(json: &[u8], change: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut value: Value = serde_json::from_slice(json).unwrap();
    change(&mut value);
    serde_json::to_vec(&value).unwrap()
}

/// A `Metaspace` BPE trained here on the fixture corpora, with `<unk>`, `[EOD]`, `[PAD]` and
/// the 256 byte tokens (for the `byte_fallback` variant).
fn metaspace_json() -> &'static [u8] {
    static JSON: OnceLock<Vec<u8>> = OnceLock::new();
    JSON.get_or_init(|| {
        let mut specials: Vec<AddedToken> = ["<unk>", "[EOD]", "[PAD]"]
            .iter()
            .map(|t| AddedToken::from(t.to_string(), true))
            .collect();
        specials.extend((0..=255u8).map(|b| AddedToken::from(format!("<0x{b:02X}>"), true)));
        let trainer = BpeTrainerBuilder::new()
            .vocab_size(1500)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(specials)
            .build();
        let mut trainer = TrainerWrapper::BpeTrainer(trainer);
        let model = BPE::builder()
            .unk_token("<unk>".to_string())
            .build()
            .unwrap();
        let mut tokenizer = Tokenizer::new(model);
        tokenizer.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::Always, true)));
        let texts: Vec<&str> = corpus().iter().map(String::as_str).take(400).collect();
        tokenizer.train(&mut trainer, texts.into_iter()).unwrap();
        tokenizer.to_string(false).unwrap().into_bytes()
    })
}

/// Every tokenizer the fast encoder must match, by name.
fn tokenizers() -> &'static [(String, DocTokenizer)] {
    static ALL: OnceLock<Vec<(String, DocTokenizer)>> = OnceLock::new();
    ALL.get_or_init(|| {
        let gpt2 = std::fs::read(fixture("tokenizers/gpt2.json")).unwrap();
        let neox = std::fs::read(fixture("tokenizers/gpt-neox-20b.json")).unwrap();
        let trained = redpack::train_tokenizer::train_bpe(
            corpus().iter().take(300),
            &redpack::train_tokenizer::TrainConfig {
                vocab_size: 2000,
                ..Default::default()
            },
        )
        .unwrap();
        let trained = redpack::train_tokenizer::to_json(&trained).unwrap().into_bytes();
        let llama3 = edit(&gpt2, |v| {
            v["pre_tokenizer"] = serde_json::json!({
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": redpack::tokenize::pretok::LLAMA3_PATTERN},
                     "behavior": "Isolated", "invert": false},
                    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                     "use_regex": false}
                ]
            });
            v["model"]["ignore_merges"] = Value::Bool(true);
        });
        let prefix_space = edit(&gpt2, |v| {
            v["pre_tokenizer"]["add_prefix_space"] = Value::Bool(true);
        });
        let meta = metaspace_json();
        let variant = |scheme: &str, split: bool, fallback: bool, fuse: bool| {
            edit(meta, |v| {
                v["pre_tokenizer"]["prepend_scheme"] = Value::String(scheme.to_string());
                v["pre_tokenizer"]["split"] = Value::Bool(split);
                v["model"]["byte_fallback"] = Value::Bool(fallback);
                v["model"]["fuse_unk"] = Value::Bool(fuse);
            })
        };
        let list = vec![
            ("gpt2", gpt2.clone()),
            ("gpt-neox-20b", neox),
            ("train-tokenizer", trained),
            ("llama3-pattern", llama3),
            ("gpt2-add-prefix-space", prefix_space),
            ("metaspace", meta.to_vec()),
            ("metaspace-first-fuse-unk", variant("first", true, false, true)),
            ("metaspace-never", variant("never", true, false, false)),
            ("metaspace-no-split", variant("always", false, false, false)),
            ("metaspace-byte-fallback", variant("always", true, true, false)),
        ];
        list.into_iter()
            .map(|(name, json)| {
                let tokenizer = load(name, json);
                assert!(
                    tokenizer.fast().is_some(),
                    "{name}: {}",
                    tokenizer.encoder()
                );
                (name.to_string(), tokenizer)
            })
            .collect()
    })
}

fn excerpt(text: &str, around: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    let from = around.saturating_sub(40).min(chars.len());
    let to = (around + 40).min(chars.len());
    format!("{:?}", chars[from..to].iter().collect::<String>())
}

/// Panics, naming the tokenizer and the first difference, unless the fast ids equal the
/// `tokenizers` crate's for the whole text.
fn check(name: &str, tokenizer: &DocTokenizer, text: &str) {
    let reference = tokenizer.encode_reference(text).unwrap();
    let fast = tokenizer.fast().unwrap().encode(text);
    if fast != reference {
        let at = fast
            .iter()
            .zip(&reference)
            .position(|(a, b)| a != b)
            .unwrap_or(fast.len().min(reference.len()));
        let decoded = tokenizer
            .inner()
            .decode(&reference[..at], false)
            .unwrap_or_default();
        panic!(
            "{name}: ids differ at token {at} of {} (fast {:?}, tokenizers {:?}) near {} in a text of {} bytes",
            reference.len(),
            &fast[at..(at + 5).min(fast.len())],
            &reference[at..(at + 5).min(reference.len())],
            excerpt(text, decoded.chars().count()),
            text.len()
        );
    }
}

#[test]
fn fixture_corpora_give_identical_ids() {
    let texts = corpus();
    for (name, tokenizer) in tokenizers() {
        for text in texts {
            check(name, tokenizer, text);
        }
    }
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const FRAGMENTS: &[&str] = &[
    "<|endoftext|>",
    "[EOD]",
    "[PAD]",
    "<unk>",
    "<|padding|>",
    "|||IP_ADDRESS|||",
    "|||EMAIL_ADDRESS|||",
    "<0x41>",
    "▁",
    "▁▁",
    "'s",
    "'S",
    "'ll",
    "'LL",
    "'ſ",
    "'re",
    "'Ve",
    "''s",
    " 's",
    "don't",
    "e\u{301}",
    "\u{1100}\u{1161}\u{11a8}",
    "A\u{30a}",
    "\u{212b}",
    "👩\u{200d}👩\u{200d}👧",
    "👍🏽",
    "🇫🇷",
    "中文字符",
    "日本語の",
    "한국어",
    "مرحبا بالعالم",
    "שלום",
    "\u{202e}abc\u{202c}",
    "\u{feff}",
    "\u{200b}",
    "\u{3000}",
    "\u{a0}",
    "\u{85}",
    "\u{2028}",
    "\r\n",
    "\n\n\n",
    "\t\t",
    "    ",
    "12345678901",
    "٣٤٥",
    "Ⅻ",
    "½",
    "x²",
    "...",
    "!!??",
    "$1,000.00",
    "http://example.com/a?b=c",
    "\u{0}",
    "\u{7f}",
    "\u{9f}",
    "\u{1b}[0m",
    "ǅ",
    "ﬁ",
    "Ω",
    "\u{10ffff}",
    "\u{e000}",
    "\u{fffd}",
    "\u{1d400}",
];

/// One generated document mixing words, whitespace, digits, fragments and random code points
/// of every plane.
fn random_text(state: &mut u64) -> String {
    let mut text = String::new();
    let parts = splitmix(state) % 60;
    for _ in 0..parts {
        let r = splitmix(state);
        match r % 11 {
            0..=2 => {
                let words = [
                    "the", "Quick", "brown", "fox's", "jumps", "über", "naïve", "i",
                ];
                text.push_str(words[(r >> 8) as usize % words.len()]);
            }
            3 => {
                let spaces = [
                    " ", "\n", "\t", "\r", "\u{3000}", "\u{a0}", "\u{2028}", "\u{85}",
                ];
                for _ in 0..(r >> 8) % 6 + 1 {
                    text.push_str(spaces[(splitmix(state) % spaces.len() as u64) as usize]);
                }
            }
            4 => {
                for _ in 0..(r >> 8) % 9 + 1 {
                    text.push(char::from(b'0' + (splitmix(state) % 10) as u8));
                }
            }
            5 | 6 => text.push_str(FRAGMENTS[(r >> 8) as usize % FRAGMENTS.len()]),
            7 => {
                // A random scalar value of any plane (surrogates excluded).
                for _ in 0..(r >> 8) % 4 + 1 {
                    let cp = (splitmix(state) % 0x11_0000) as u32;
                    text.push(char::from_u32(cp).unwrap_or('\u{fffd}'));
                }
            }
            8 => {
                // Combining marks, stacked.
                for _ in 0..(r >> 8) % 4 + 1 {
                    let cp = 0x300 + (splitmix(state) % 0x70) as u32;
                    text.push(char::from_u32(cp).unwrap());
                }
            }
            9 => {
                // Invalid UTF-8 replaced as a reader would.
                let bytes: Vec<u8> = (0..(r >> 8) % 8 + 1)
                    .map(|_| splitmix(state) as u8)
                    .collect();
                text.push_str(&String::from_utf8_lossy(&bytes));
            }
            _ => text.push(' '),
        }
        if r >> 60 == 0 {
            text.push(' ');
        }
    }
    text
}

#[test]
fn random_unicode_gives_identical_ids() {
    let seconds: f64 = std::env::var("REDPACK_TOKENIZE_PROPTEST_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2.0);
    let all = tokenizers();
    let started = Instant::now();
    let mut cases = 0u64;
    let mut state = 0x5eed_u64;
    while cases < 50 || started.elapsed() < Duration::from_secs_f64(seconds) {
        let seed = state;
        let text = random_text(&mut state);
        for (name, tokenizer) in all {
            let outcome = std::panic::catch_unwind(|| check(name, tokenizer, &text));
            if let Err(panic) = outcome {
                eprintln!("case seed {seed:#x}: text {text:?}");
                std::panic::resume_unwind(panic);
            }
        }
        cases += 1;
    }
    eprintln!("{cases} generated documents on {} tokenizers", all.len());
}

#[test]
fn edge_cases_give_identical_ids() {
    let mut texts: Vec<String> = vec![
        String::new(),
        " ".into(),
        "a".into(),
        "\n".into(),
        " ".repeat(10_000),
        "\n".repeat(3000),
        " \t\n".repeat(2000),
        "7".repeat(100_000),
        "a".repeat(70_000),
        "ab".repeat(30_000),
        "word ".repeat(10_000),
        "<|endoftext|>".repeat(500),
        "x<|endoftext|>y [EOD] <|padding|>z|||IP_ADDRESS|||".into(),
        format!("{}a{}", " ".repeat(25), " ".repeat(30)),
    ];
    for text in FRAGMENTS {
        texts.push(text.to_string());
        texts.push(format!(" {text} "));
    }
    // Every code point of planes 0 to 3 (where all assigned letters, digits and spaces are),
    // and every 16th of the rest (unassigned, tags, private use), in runs.
    let all: String = (0..0x11_0000u32)
        .filter(|cp| *cp < 0x4_0000 || cp % 16 == 0)
        .filter_map(char::from_u32)
        .collect();
    let mut start = 0;
    while start < all.len() {
        let mut end = (start + 4096).min(all.len());
        while !all.is_char_boundary(end) {
            end += 1;
        }
        texts.push(all[start..end].to_string());
        start = end;
    }
    for (name, tokenizer) in tokenizers() {
        for text in &texts {
            check(name, tokenizer, text);
        }
    }
}

/// A document of `bytes` bytes of the fixture corpora.
fn long_document(bytes: usize) -> String {
    let mut text = String::with_capacity(bytes + 100_000);
    for doc in corpus().iter().cycle() {
        if text.len() >= bytes {
            break;
        }
        text.push_str(doc);
        text.push('\n');
    }
    let mut end = bytes.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
}

#[test]
fn long_documents_give_identical_ids_whole_and_cut() {
    for (name, tokenizer) in tokenizers() {
        let text = long_document(300_000);
        let whole = tokenizer.encode_reference(&text).unwrap();
        assert_eq!(tokenizer.fast().unwrap().encode(&text), whole, "{name}");
        let small = load(name, tokenizer.json().to_vec()).with_chunk_bytes(1024);
        let pieces = small.pieces(&text);
        if name == "metaspace-no-split" {
            assert_eq!(
                pieces.len(),
                1,
                "{name}: a tokenizer without safe cuts is not cut"
            );
        } else {
            assert!(pieces.len() > 100, "{name}: {} pieces", pieces.len());
        }
        assert_eq!(small.encode(&text).unwrap(), whole, "{name}: cut");
        let batch = small.encode_batch(&[&text, "short one", &text]).unwrap();
        assert_eq!(batch[0], whole, "{name}: batch");
        assert_eq!(batch[1], small.encode_reference("short one").unwrap());
        assert_eq!(batch[2], whole, "{name}: batch");
    }
}

/// `count` distinct words from `first` on, as text: letters of `first..first + count` in base 26.
fn distinct_words(first: usize, count: usize) -> String {
    let mut text = String::new();
    for mut n in first..first + count {
        text.push(' ');
        loop {
            text.push(char::from(b'a' + (n % 26) as u8));
            n /= 26;
            if n == 0 {
                break;
            }
        }
    }
    text
}

#[test]
fn more_distinct_words_than_a_cache_generation_holds() {
    // A thread's word cache keeps two generations of 131,072 words. Texts of 100,000 distinct
    // words each, A then B then A again: B fills the current generation and retires it, the
    // second A finds its words in the older generation, moves them and retires the current
    // generation once more; every ids must stay those of the tokenizers crate.
    let a = distinct_words(0, 100_000);
    let b = distinct_words(100_000, 100_000);
    let chosen = tokenizers()
        .iter()
        .filter(|(name, _)| name == "gpt2" || name == "metaspace");
    for (name, tokenizer) in chosen {
        let fast = tokenizer.fast().unwrap();
        for (pass, text) in [&a, &b, &a].into_iter().enumerate() {
            let reference = tokenizer.encode_reference(text).unwrap();
            assert!(fast.encode(text) == reference, "{name}: pass {pass}");
        }
    }
}

#[test]
fn an_eight_megabyte_document_gives_identical_ids() {
    let text = long_document(8 << 20);
    assert_eq!(text.len(), 8 << 20);
    let (name, gpt2) = &tokenizers()[0];
    let whole = gpt2.encode_reference(&text).unwrap();
    assert_eq!(gpt2.fast().unwrap().encode(&text), whole, "{name}");
    assert_eq!(gpt2.encode(&text).unwrap(), whole, "{name}: cut");
}

#[test]
fn unsupported_files_use_the_tokenizers_crate() {
    let gpt2 = std::fs::read(fixture("tokenizers/gpt2.json")).unwrap();
    let lowercase = edit(&gpt2, |v| {
        v["normalizer"] = serde_json::json!({"type": "Lowercase"});
    });
    let tokenizer = load("lowercase", lowercase);
    assert!(tokenizer.fast().is_none());
    assert_eq!(
        tokenizer.encoder(),
        "tokenizers crate (the fast encoder does not support: normalizer Lowercase)"
    );
    let text = long_document(200_000);
    assert_eq!(
        tokenizer.pieces(&text).len(),
        1,
        "unknown tokenizers are not cut"
    );
    let ids = tokenizer.encode(&text).unwrap();
    assert_eq!(
        ids,
        tokenizer.encode_reference(&text.to_lowercase()).unwrap()
    );
    let (_, fast) = &tokenizers()[0];
    assert_eq!(fast.encoder(), "fast byte-level BPE (GPT-2 split pattern)");
}
