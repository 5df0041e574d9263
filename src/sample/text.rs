//! Seeded, English-like text for the sample corpus.
//!
//! Sentences are built from small word lists with a few grammatical templates, so the text has
//! real word frequencies and punctuation for a BPE trainer, while two independently generated
//! documents share almost no word 5-grams (so only planted near duplicates are near). Each
//! RedPajama subset gets its own flavour (LaTeX, code, Q&A, encyclopedia, chapters).

use super::words::{ADJECTIVES, ADVERBS, NAMES, NOUNS, PREPOSITIONS, VERBS};

/// SplitMix64: tiny, seedable, and identical on every platform, which is all the sample needs.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5EED_CAFE_F00D_D00D)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`; 0 when `n` is 0.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % (n as u64).max(1)) as usize
    }

    pub fn range(&mut self, low: usize, high: usize) -> usize {
        low + self.below(high - low + 1)
    }

    pub fn pick<'a>(&mut self, words: &[&'a str]) -> &'a str {
        words[self.below(words.len())]
    }

    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    /// Lowercase hex string of `len` digits (uuids, content hashes).
    pub fn hex(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| char::from_digit(self.below(16) as u32, 16).unwrap_or('0'))
            .collect()
    }
}

fn third_person(verb: &str) -> String {
    if verb.ends_with('s') || verb.ends_with("sh") || verb.ends_with("ch") || verb.ends_with('x') {
        format!("{verb}es")
    } else {
        format!("{verb}s")
    }
}

fn past(verb: &str) -> String {
    if verb == "build" {
        "built".to_owned()
    } else if verb.ends_with('e') {
        format!("{verb}d")
    } else {
        format!("{verb}ed")
    }
}

/// `word` with its indefinite article (`a river`, `an island`).
fn a(word: &str) -> String {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        format!("an {word}")
    } else {
        format!("a {word}")
    }
}

fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// One sentence from a random template.
pub fn sentence(rng: &mut Rng) -> String {
    let (n1, n2, n3) = (rng.pick(NOUNS), rng.pick(NOUNS), rng.pick(NOUNS));
    let (a1, a2) = (rng.pick(ADJECTIVES), rng.pick(ADJECTIVES));
    let verb = rng.pick(VERBS);
    let prep = rng.pick(PREPOSITIONS);
    let text = match rng.below(6) {
        0 => format!(
            "the {a1} {n1} {} {} {prep} the {n2}.",
            third_person(verb),
            rng.pick(ADVERBS)
        ),
        1 => format!(
            "{} {} the {a1} {n1} of the {a2} {n2}.",
            rng.pick(NAMES),
            past(verb)
        ),
        2 => format!(
            "in the {a1} {n1}, {} {} the {a2} {n3}.",
            a(n2),
            third_person(verb)
        ),
        3 => format!("why does the {n1} {verb} the {a1} {n2} {prep} the {n3}?"),
        4 => format!(
            "every {n1} {} {} when the {a1} {n2} {} {prep} {} {n3}.",
            rng.pick(ADVERBS),
            past(verb),
            past(rng.pick(VERBS)),
            a(a2)
        ),
        _ => format!(
            "{} and {} {} {} {} {a1} {n1}s.",
            rng.pick(NAMES),
            rng.pick(NAMES),
            past(verb),
            rng.below(90) + 2,
            rng.pick(ADJECTIVES)
        ),
    };
    capitalize(&text)
}

/// A paragraph of `sentences` sentences.
pub fn paragraph(rng: &mut Rng, sentences: usize) -> String {
    (0..sentences)
        .map(|_| sentence(rng))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A title of a few capitalized words.
pub fn title(rng: &mut Rng) -> String {
    format!(
        "{} {} of the {}",
        capitalize(rng.pick(ADJECTIVES)),
        capitalize(rng.pick(NOUNS)),
        capitalize(rng.pick(NOUNS))
    )
}

/// Paragraphs joined by blank lines, about `words` words in total.
pub fn prose(rng: &mut Rng, words: usize) -> String {
    let mut out = Vec::new();
    let mut count = 0;
    while count < words {
        let sentences = rng.range(3, 7);
        let para = paragraph(rng, sentences);
        count += para.split_whitespace().count();
        out.push(para);
    }
    out.join("\n\n")
}

/// An arXiv-like LaTeX body.
pub fn arxiv(rng: &mut Rng, words: usize) -> String {
    let mut out = format!("\\section{{Introduction}}\n{}\n", prose(rng, words / 3));
    let (x, y) = (
        rng.pick(&["x", "y", "z", "u"]),
        rng.pick(&["\\alpha", "\\beta", "\\lambda"]),
    );
    out += &format!("\\begin{{equation}}\n{x}_{{i}} = {y} \\sum_{{j=1}}^{{n}} w_{{ij}} {x}_{{j}} + b_{{i}}\n\\end{{equation}}\n");
    out += &format!(
        "\\section{{Method}}\n{} \\cite{{{}{}}}.\n",
        prose(rng, words / 3),
        rng.pick(NAMES).to_lowercase(),
        1990 + rng.below(33)
    );
    out += &format!("\\section{{Results}}\n{}\n", prose(rng, words / 3));
    out
}

/// A source file of small functions with comments.
pub fn code(rng: &mut Rng, functions: usize) -> String {
    let mut out = format!("// {}\nuse std::collections::HashMap;\n\n", sentence(rng));
    for _ in 0..functions {
        let (noun, verb, adj) = (rng.pick(NOUNS), rng.pick(VERBS), rng.pick(ADJECTIVES));
        out += &format!(
            "/// {}\npub fn {verb}_{noun}(items: &[u32], {adj}: u32) -> u32 {{\n    let mut total = {};\n    for item in items {{\n        if *item > {adj} {{\n            total += item * {};\n        }}\n    }}\n    total\n}}\n\n",
            sentence(rng),
            rng.below(10),
            rng.below(7) + 1
        );
    }
    out
}

/// A StackExchange-like question and answers.
pub fn question(rng: &mut Rng, words: usize) -> String {
    format!(
        "Q: {}\n\n{}\n\nA: {}\n\nA: {}",
        capitalize(&format!(
            "how do I {} the {} {}?",
            rng.pick(VERBS),
            rng.pick(ADJECTIVES),
            rng.pick(NOUNS)
        )),
        paragraph(rng, 3),
        prose(rng, words / 2),
        paragraph(rng, 4)
    )
}

/// A Wikipedia-like article.
pub fn article(rng: &mut Rng, words: usize) -> String {
    let name = title(rng);
    let what = format!("{} {}", a(rng.pick(ADJECTIVES)), rng.pick(NOUNS));
    format!(
        "{name}\n\n{name} is {what} {} the {}. {}",
        rng.pick(PREPOSITIONS),
        rng.pick(NOUNS),
        prose(rng, words)
    )
}

/// A book with chapters and dialogue.
pub fn book(rng: &mut Rng, chapters: usize, words_per_chapter: usize) -> String {
    let mut out = format!("{}\n\n", title(rng).to_uppercase());
    for chapter in 1..=chapters {
        out += &format!("CHAPTER {chapter}\n\n{}\n\n", prose(rng, words_per_chapter));
        out += &format!("\"{}\" said {}.\n\n", sentence(rng), rng.pick(NAMES));
    }
    out
}

/// A chain-of-thought question for FLAN-style examples, and its target.
pub fn flan_example(rng: &mut Rng) -> (String, String) {
    let answer = if rng.chance(50) { "yes" } else { "no" };
    let input = format!(
        "Question: Would {} {} {} {} {}?\nOptions:\n- yes\n- no\nLet's think step by step.",
        a(rng.pick(ADJECTIVES)),
        rng.pick(NOUNS),
        rng.pick(VERBS),
        a(rng.pick(ADJECTIVES)),
        rng.pick(NOUNS)
    );
    let target = format!(
        "{} {} So the answer is {answer}.",
        sentence(rng),
        sentence(rng)
    );
    (input, target)
}
