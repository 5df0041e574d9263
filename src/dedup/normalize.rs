//! Text normalization before hashing: what counts as "the same text" for deduplication.
//!
//! Two documents that differ only in Unicode composition, whitespace runs or letter case are
//! duplicates for training purposes. Each of the three steps can be switched off in the pipeline
//! file (`[dedup.normalize]`). Normalization only feeds the hashes: the tokenizer always sees the
//! original text.

use serde::{Deserialize, Serialize};
use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

/// Which normalization steps run before hashing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NormalizeConfig {
    /// Unicode NFC composition (`e` + combining acute == `é`).
    pub nfc: bool,
    /// Collapse every whitespace run to one space and trim both ends.
    pub collapse_whitespace: bool,
    /// Lower-case every letter (full Unicode lower-casing, a close stand-in for case folding).
    pub case_fold: bool,
}

impl Default for NormalizeConfig {
    fn default() -> Self {
        NormalizeConfig {
            nfc: true,
            collapse_whitespace: true,
            case_fold: true,
        }
    }
}

impl NormalizeConfig {
    /// Returns the normalized form of `text`, appended to `out` (which is cleared first).
    ///
    /// Taking the buffer lets a worker reuse one allocation for many documents.
    pub fn normalize_into(&self, text: &str, out: &mut String) {
        out.clear();
        // NFC only allocates when the quick check says the text may not be composed already;
        // that is almost never the case for web text, so the common path is a borrow.
        let composed: std::borrow::Cow<'_, str> =
            if self.nfc && is_nfc_quick(text.chars()) != IsNormalized::Yes {
                std::borrow::Cow::Owned(text.nfc().collect())
            } else {
                std::borrow::Cow::Borrowed(text)
            };
        out.reserve(composed.len());
        if self.collapse_whitespace {
            for (index, word) in composed.split_whitespace().enumerate() {
                if index > 0 {
                    out.push(' ');
                }
                self.push_cased(word, out);
            }
        } else {
            self.push_cased(&composed, out);
        }
    }

    /// Convenience wrapper around [`NormalizeConfig::normalize_into`].
    pub fn normalize(&self, text: &str) -> String {
        let mut out = String::new();
        self.normalize_into(text, &mut out);
        out
    }

    fn push_cased(&self, piece: &str, out: &mut String) {
        if !self.case_fold {
            out.push_str(piece);
        } else if piece.is_ascii() {
            out.extend(piece.bytes().map(|b| char::from(b.to_ascii_lowercase())));
        } else {
            for ch in piece.chars() {
                out.extend(ch.to_lowercase());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_steps_make_variants_equal() {
        let config = NormalizeConfig::default();
        let a = config.normalize("  Caf\u{e9}\tAU  lait\n");
        let b = config.normalize("cafe\u{301} au lait");
        assert_eq!(a, "café au lait");
        assert_eq!(a, b);
    }

    #[test]
    fn each_step_can_be_switched_off() {
        let none = NormalizeConfig {
            nfc: false,
            collapse_whitespace: false,
            case_fold: false,
        };
        let text = " A\u{301}  b ";
        assert_eq!(none.normalize(text), text);
        let only_case = NormalizeConfig {
            case_fold: true,
            ..none
        };
        assert_eq!(only_case.normalize(text), " a\u{301}  b ");
        let only_ws = NormalizeConfig {
            collapse_whitespace: true,
            ..none
        };
        assert_eq!(only_ws.normalize(text), "A\u{301} b");
        let only_nfc = NormalizeConfig { nfc: true, ..none };
        assert_eq!(only_nfc.normalize(text), " \u{c1}  b ");
    }

    #[test]
    fn non_ascii_case_folding() {
        let config = NormalizeConfig::default();
        assert_eq!(config.normalize("ÜBER Straße ΣΟΦΙΑ"), "über straße σοφια");
    }
}
