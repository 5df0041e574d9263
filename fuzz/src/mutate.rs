//! Mutations: byte-level (flips, interesting values, truncation, deletion, duplication, splices)
//! and structural (edits of one field of a JSON or TOML document, so parsers are passed and the
//! checks behind them are reached).

use serde_json::Value as Json;

use crate::rng::Rng;

const INTERESTING_BYTES: &[u8] = &[0, 1, 0x7f, 0x80, 0xff, b'"', b'\n', b'{', b'}', b'\\', b','];

const INTERESTING_INTS: &[u64] = &[
    0,
    1,
    2,
    0x7f,
    0xff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
];

/// Applies one to four byte-level mutations. `other` is another seed, for splices.
pub fn bytes(rng: &mut Rng, data: &mut Vec<u8>, other: &[u8]) {
    for _ in 0..1 + rng.below(4) {
        byte_once(rng, data, other);
    }
}

fn byte_once(rng: &mut Rng, data: &mut Vec<u8>, other: &[u8]) {
    let len = data.len();
    match rng.below(10) {
        0 | 1 if len > 0 => {
            let at = rng.below(len);
            data[at] ^= 1 << rng.below(8);
        }
        2 if len > 0 => {
            let at = rng.below(len);
            data[at] = *rng.pick(INTERESTING_BYTES);
        }
        3 if len > 0 => {
            let width = *rng.pick(&[1usize, 2, 4, 8]);
            let value = rng.pick(INTERESTING_INTS).to_le_bytes();
            let at = rng.below(len);
            for (k, b) in value.iter().take(width).enumerate() {
                if let Some(slot) = data.get_mut(at + k) {
                    *slot = *b;
                }
            }
        }
        4 => data.truncate(rng.below(len + 1)),
        5 if len > 0 => {
            let start = rng.below(len);
            let end = (start + 1 + rng.below(64.min(len - start))).min(len);
            data.drain(start..end);
        }
        6 if len > 0 => {
            let start = rng.below(len);
            let end = (start + 1 + rng.below(256.min(len - start))).min(len);
            let chunk = data[start..end].to_vec();
            let at = rng.below(len + 1);
            data.splice(at..at, chunk);
        }
        7 if !other.is_empty() => {
            let at = rng.below(len + 1);
            let from = rng.below(other.len());
            data.truncate(at);
            data.extend_from_slice(&other[from..]);
        }
        8 => {
            let at = rng.below(len + 1);
            let n = 1 + rng.below(16);
            let junk: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            data.splice(at..at, junk);
        }
        _ if len > 0 => {
            let at = rng.below(len);
            data[at] = rng.next_u64() as u8;
        }
        _ => data.push(rng.next_u64() as u8),
    }
}

/// Replaces, removes or copies one node of a JSON document. `None` when `text` is not JSON.
pub fn json(rng: &mut Rng, text: &[u8]) -> Option<Vec<u8>> {
    let mut doc: Json = serde_json::from_slice(text).ok()?;
    for _ in 0..1 + rng.below(3) {
        json_once(rng, &mut doc);
    }
    Some(if rng.one_in(2) {
        serde_json::to_vec(&doc).ok()?
    } else {
        serde_json::to_vec_pretty(&doc).ok()?
    })
}

fn json_once(rng: &mut Rng, doc: &mut Json) {
    let count = count_nodes(doc);
    let target = rng.below(count);
    let donor = nth_node(doc, rng.below(count)).cloned();
    let mut seen = 0;
    let Some(node) = nth_node_mut(doc, target, &mut seen) else {
        return;
    };
    match rng.below(8) {
        0 if donor.is_some() => *node = donor.unwrap_or(Json::Null),
        1 => match node {
            Json::Object(map) if !map.is_empty() => {
                let key = map.keys().nth(rng.below(map.len())).cloned();
                if let Some(key) = key {
                    map.remove(&key);
                }
            }
            Json::Array(items) if !items.is_empty() => {
                let at = rng.below(items.len());
                if rng.one_in(2) {
                    items.remove(at);
                } else {
                    let copy = items[at].clone();
                    items.insert(at, copy);
                }
            }
            _ => *node = interesting_json(rng),
        },
        2 | 3 if node.is_number() => *node = interesting_number(rng),
        4 if node.is_string() => *node = Json::String(interesting_string(rng)),
        _ => *node = interesting_json(rng),
    }
}

fn count_nodes(v: &Json) -> usize {
    1 + match v {
        Json::Array(items) => items.iter().map(count_nodes).sum(),
        Json::Object(map) => map.values().map(count_nodes).sum(),
        _ => 0,
    }
}

fn nth_node(v: &Json, n: usize) -> Option<&Json> {
    fn walk<'a>(v: &'a Json, n: usize, seen: &mut usize) -> Option<&'a Json> {
        if *seen == n {
            return Some(v);
        }
        *seen += 1;
        match v {
            Json::Array(items) => items.iter().find_map(|x| walk(x, n, seen)),
            Json::Object(map) => map.values().find_map(|x| walk(x, n, seen)),
            _ => None,
        }
    }
    walk(v, n, &mut 0)
}

fn nth_node_mut<'a>(v: &'a mut Json, n: usize, seen: &mut usize) -> Option<&'a mut Json> {
    if *seen == n {
        return Some(v);
    }
    *seen += 1;
    match v {
        Json::Array(items) => items.iter_mut().find_map(|x| nth_node_mut(x, n, seen)),
        Json::Object(map) => map.values_mut().find_map(|x| nth_node_mut(x, n, seen)),
        _ => None,
    }
}

fn interesting_number(rng: &mut Rng) -> Json {
    match rng.below(6) {
        0 => Json::from(*rng.pick(INTERESTING_INTS)),
        1 => Json::from(-(rng.below(3) as i64) - 1),
        2 => Json::from(i64::MIN),
        3 => Json::from(*rng.pick(&[0.5f64, -0.5, 1e308, -1e308, 1e-310, 3.5e9])),
        4 => Json::from(rng.below(70_000) as u64),
        _ => Json::from(rng.next_u64() >> rng.below(64)),
    }
}

fn interesting_string(rng: &mut Rng) -> String {
    match rng.below(9) {
        0 => String::new(),
        1 => "../../../../etc/passwd".into(),
        2 => "/etc/passwd".into(),
        3 => "shard-00000.tokens".into(),
        4 => "\u{0}\u{fffd}\u{1f600}".into(),
        5 => "A".repeat(1 + rng.below(20_000)),
        6 => "packed".into(),
        7 => "examples".into(),
        _ => format!("{:064x}", rng.next_u64()),
    }
}

fn interesting_json(rng: &mut Rng) -> Json {
    match rng.below(7) {
        0 => Json::Null,
        1 => Json::Bool(rng.one_in(2)),
        2 => Json::Array(Vec::new()),
        3 => Json::Object(Default::default()),
        4 | 5 => interesting_number(rng),
        _ => Json::String(interesting_string(rng)),
    }
}

/// Replaces or removes one value of a TOML document. `None` when `text` is not TOML.
pub fn toml(rng: &mut Rng, text: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(text).ok()?;
    let mut doc: toml::Table = toml::from_str(text).ok()?;
    for _ in 0..1 + rng.below(3) {
        let mut slots: Vec<Vec<String>> = Vec::new();
        collect_toml(&doc, &mut Vec::new(), &mut slots);
        if slots.is_empty() {
            break;
        }
        let path = rng.pick(&slots).clone();
        edit_toml(rng, &mut doc, &path);
    }
    toml::to_string(&doc).ok().map(String::into_bytes)
}

fn collect_toml(table: &toml::Table, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    for (key, value) in table {
        prefix.push(key.clone());
        out.push(prefix.clone());
        match value {
            toml::Value::Table(t) => collect_toml(t, prefix, out),
            toml::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let toml::Value::Table(t) = item {
                        prefix.push(format!("#{i}"));
                        collect_toml(t, prefix, out);
                        prefix.pop();
                    }
                }
            }
            _ => {}
        }
        prefix.pop();
    }
}

fn edit_toml(rng: &mut Rng, table: &mut toml::Table, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if rest.is_empty() {
        if rng.one_in(4) {
            table.remove(first);
        } else {
            table.insert(first.clone(), interesting_toml(rng));
        }
        return;
    }
    match table.get_mut(first) {
        Some(toml::Value::Table(inner)) => edit_toml(rng, inner, rest),
        Some(toml::Value::Array(items)) => {
            let index = rest[0]
                .strip_prefix('#')
                .and_then(|i| i.parse::<usize>().ok());
            if let Some(toml::Value::Table(inner)) = index.and_then(|i| items.get_mut(i)) {
                edit_toml(rng, inner, &rest[1..]);
            }
        }
        _ => {}
    }
}

fn interesting_toml(rng: &mut Rng) -> toml::Value {
    match rng.below(6) {
        0 => toml::Value::Integer(*rng.pick(&[0i64, -1, 1, i64::MAX, i64::MIN, 1 << 40, 65_537])),
        1 => toml::Value::Float(*rng.pick(&[0.0f64, -1.0, 1e308, f64::NAN, f64::INFINITY, 0.5])),
        2 => toml::Value::String(interesting_string(rng)),
        3 => toml::Value::Boolean(rng.one_in(2)),
        4 => toml::Value::Array(Vec::new()),
        _ => toml::Value::Integer(rng.next_u64() as i64 >> rng.below(63)),
    }
}
