//! Scoring pieces: choosing among log-likelihoods, cutting generations at stop strings, and each
//! task family's answer extraction and comparison.

use super::Extract;

/// The chosen index by raw log-likelihood (`acc`) and by log-likelihood per character of the
/// choice text (`acc_norm`, as the lm-evaluation-harness). Ties go to the lowest index.
pub fn choose(logprobs: &[f64], choices: &[String]) -> (usize, usize) {
    let argmax = |score: &dyn Fn(usize) -> f64| {
        let mut best = 0;
        for i in 1..logprobs.len() {
            if score(i) > score(best) {
                best = i;
            }
        }
        best
    };
    let raw = argmax(&|i| logprobs[i]);
    let norm = argmax(&|i| logprobs[i] / choices[i].chars().count().max(1) as f64);
    (raw, norm)
}

/// `text` up to the earliest occurrence of any stop string.
pub fn cut_at_stops<'a>(text: &'a str, stops: &[&str]) -> &'a str {
    let end = stops
        .iter()
        .filter_map(|stop| text.find(stop))
        .min()
        .unwrap_or(text.len());
    &text[..end]
}

/// SQuAD's answer normalization: lower case, punctuation removed, the articles a/an/the
/// removed, whitespace collapsed.
pub fn normalize_answer(text: &str) -> String {
    let lower: String = text
        .to_lowercase()
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    lower
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A number as GSM8K compares it: commas and `$` removed, a final `.` dropped.
pub fn normalize_number(text: &str) -> String {
    let cleaned: String = text
        .trim()
        .chars()
        .filter(|c| *c != ',' && *c != '$')
        .collect();
    cleaned.trim_end_matches('.').to_owned()
}

/// The gold answer of a GSM8K solution: the number after its last `####`.
pub fn gsm8k_gold(solution: &str) -> Option<String> {
    let (_, after) = solution.rsplit_once("####")?;
    let number = first_number(after)?;
    Some(normalize_number(&number))
}

/// The numbers in `text`, in order: an optional `-`, digits, with `,` and `.` between digits.
fn numbers(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_digit() {
            let negative = i > 0 && chars[i - 1] == '-';
            let mut j = i;
            while j < chars.len()
                && (chars[j].is_ascii_digit()
                    || ((chars[j] == ',' || chars[j] == '.')
                        && chars.get(j + 1).is_some_and(char::is_ascii_digit)))
            {
                j += 1;
            }
            let digits: String = chars[i..j].iter().collect();
            out.push(if negative {
                format!("-{digits}")
            } else {
                digits
            });
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

fn first_number(text: &str) -> Option<String> {
    numbers(text).into_iter().next()
}

/// GSM8K's prediction: the number after `####` in the output, else its last number.
pub fn extract_gsm8k(output: &str) -> Option<String> {
    if let Some((_, after)) = output.split_once("####") {
        if let Some(number) = first_number(after) {
            return Some(normalize_number(&number));
        }
    }
    numbers(output).pop().map(|n| normalize_number(&n))
}

/// Chain of thought's prediction: the text after the last "the answer is" (any case), up to a
/// newline or a sentence-ending `.`, trimmed.
pub fn extract_answer_is(output: &str) -> Option<String> {
    let lower = output.to_lowercase();
    let key = "the answer is";
    // Lower-casing can change byte lengths outside ASCII; search the original when it differs.
    let start = if lower.len() == output.len() {
        lower.rfind(key)? + key.len()
    } else {
        output.rfind("answer is")? + "answer is".len()
    };
    let rest = output[start..].trim_start_matches([' ', ':']);
    let line = rest.split('\n').next().unwrap_or("");
    let mut answer = line.trim();
    if let Some(cut) = answer.find(". ") {
        answer = &answer[..cut];
    }
    let answer = answer.trim_end_matches('.').trim();
    (!answer.is_empty()).then(|| answer.to_owned())
}

/// An option label compared by its letter: `(B)` and `B` are the same; otherwise the text,
/// case ignored.
fn option_key(text: &str) -> String {
    let t = text.trim().trim_end_matches('.').trim();
    let inner = t
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .filter(|s| s.len() == 1 && s.chars().all(|c| c.is_ascii_alphabetic()));
    inner.unwrap_or(t).to_lowercase()
}

/// The answer read from a generation (already cut at the stop strings), as compared.
pub fn extract(kind: Extract, output: &str) -> Option<String> {
    match kind {
        Extract::Gsm8k => extract_gsm8k(output),
        Extract::AnswerIs => extract_answer_is(output),
        Extract::Short => Some(normalize_answer(output)),
    }
}

/// Whether the extracted `prediction` matches one of `answers` under the task's comparison.
pub fn is_correct(kind: Extract, prediction: Option<&str>, answers: &[String]) -> bool {
    let Some(prediction) = prediction else {
        return false;
    };
    answers.iter().any(|answer| match kind {
        Extract::Gsm8k => {
            let gold = normalize_number(answer);
            prediction == gold
                || matches!((prediction.parse::<f64>(), gold.parse::<f64>()), (Ok(a), Ok(b)) if a == b)
        }
        Extract::AnswerIs => option_key(prediction) == option_key(answer),
        Extract::Short => {
            let gold = normalize_answer(answer);
            !gold.is_empty() && prediction == gold
        }
    })
}
