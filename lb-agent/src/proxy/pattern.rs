//! ALB-style wildcard patterns: `*` matches any run of characters (also none), `?` exactly one
//! character (one Unicode scalar, not one byte). Compiled once when rules load; matching is a
//! linear scan with one backtrack point, so its cost is bounded by pattern length × input
//! length and no input can make it explode (there is no regex engine behind it).
//!
//! Case follows AWS's documentation for each condition, which `PatternKind` names:
//!
//! | kind | case | notes |
//! | --- | --- | --- |
//! | `Host` | insensitive | one trailing dot ignored on either side (`example.com.` is `example.com`) |
//! | `Path` | sensitive | |
//! | `HeaderValue` | insensitive | AWS: "The comparison strings are case insensitive" |
//! | `Query` | insensitive | `\*`, `\?` and `\\` stand for the literal character, as AWS |
//!
//! Case-insensitive means ASCII case only: AWS applies rules to visible ASCII, and full
//! Unicode folding would make `?` (one character) ambiguous where folding changes length.

use thiserror::Error;

/// Which request field a pattern is matched against; decides case and escapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatternKind {
    /// The Host (or `:authority`) without its port.
    Host,
    /// The path of the request target, without its query.
    Path,
    /// One HTTP header field value.
    HeaderValue,
    /// A query-string key or value.
    Query,
}

impl PatternKind {
    fn folds_case(self) -> bool {
        !matches!(self, Self::Path)
    }

    /// Only query patterns have escapes: AWS documents them there and nowhere else, and a
    /// backslash in a header value pattern should keep meaning a backslash.
    fn has_escapes(self) -> bool {
        matches!(self, Self::Query)
    }
}

/// A pattern the config holds that cannot be compiled (a config-side error).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PatternError {
    /// Nothing to match; `*` matches everything.
    #[error("an empty pattern matches nothing useful; `*` matches everything")]
    Empty,
    /// A query pattern ends in a lone backslash.
    #[error("`{0}` ends in a lone `\\`; escapes are `\\*`, `\\?` and `\\\\`")]
    DanglingEscape(String),
}

/// One step of a compiled pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    /// This character (lower-cased when the kind folds case).
    Char(char),
    /// `?`: any one character.
    AnyChar,
    /// `*`: any run of characters, also an empty one.
    AnyRun,
}

/// A compiled wildcard pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    tokens: Box<[Token]>,
    kind: PatternKind,
}

impl Pattern {
    /// Compiles `text` for matching values of `kind`.
    pub fn compile(text: &str, kind: PatternKind) -> Result<Self, PatternError> {
        let text = match kind {
            PatternKind::Host => text.strip_suffix('.').unwrap_or(text),
            _ => text,
        };
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        let mut tokens = Vec::with_capacity(text.len());
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            let token = match c {
                '\\' if kind.has_escapes() => match chars.next() {
                    Some(escaped) => Token::Char(escaped),
                    None => return Err(PatternError::DanglingEscape(text.to_owned())),
                },
                '*' => Token::AnyRun,
                '?' => Token::AnyChar,
                c => Token::Char(c),
            };
            // `**` means what `*` means; one token keeps the backtracking to one point.
            if token == Token::AnyRun && tokens.last() == Some(&Token::AnyRun) {
                continue;
            }
            tokens.push(match token {
                Token::Char(c) if kind.folds_case() => Token::Char(c.to_ascii_lowercase()),
                t => t,
            });
        }
        Ok(Self {
            tokens: tokens.into_boxed_slice(),
            kind,
        })
    }

    /// Whether the whole of `input` matches (patterns are anchored at both ends, as AWS's).
    pub fn matches(&self, input: &str) -> bool {
        let input = match self.kind {
            PatternKind::Host => input.strip_suffix('.').unwrap_or(input),
            _ => input,
        };
        let fold = self.kind.folds_case();
        let same = |a: char, pattern: char| {
            if fold {
                a.to_ascii_lowercase() == pattern
            } else {
                a == pattern
            }
        };
        let tokens = &self.tokens;
        // `t`: next token; `at`: next byte of input. `resume`: after the last `*` seen, the
        // token after it and the input position that `*` has swallowed up to; on a mismatch
        // the `*` takes one more character and matching resumes from there. One resume point
        // is enough: a later `*` can absorb whatever an earlier one would have.
        let (mut t, mut at) = (0, 0);
        let mut resume: Option<(usize, usize)> = None;
        loop {
            let next = input[at..].chars().next();
            let advanced = match (tokens.get(t), next) {
                (Some(Token::AnyRun), _) => {
                    resume = Some((t + 1, at));
                    t += 1;
                    continue;
                }
                (Some(Token::AnyChar), Some(c)) => Some(c),
                (Some(Token::Char(p)), Some(c)) if same(c, *p) => Some(c),
                (None, None) => return true,
                _ => None,
            };
            if let Some(c) = advanced {
                t += 1;
                at += c.len_utf8();
                continue;
            }
            let Some((after_star, swallowed)) = resume else {
                return false;
            };
            let Some(c) = input[swallowed..].chars().next() else {
                return false;
            };
            resume = Some((after_star, swallowed + c.len_utf8()));
            t = after_star;
            at = swallowed + c.len_utf8();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Pattern, PatternError, PatternKind, PatternKind::*};

    fn check(rows: &[(&str, PatternKind, &str, &str, bool)]) {
        let mut failed = Vec::new();
        for &(name, kind, pattern, input, want) in rows {
            let got = Pattern::compile(pattern, kind).unwrap().matches(input);
            if got != want {
                failed.push(format!(
                    "{name}: {kind:?} `{pattern}` on `{input}`: got {got}, want {want}"
                ));
            }
        }
        assert!(failed.is_empty(), "{}", failed.join("\n"));
    }

    #[test]
    fn star_matches_any_run_and_question_mark_one_character() {
        check(&[
            ("literal", Path, "/a", "/a", true),
            ("literal longer input", Path, "/a", "/ab", false),
            ("literal shorter input", Path, "/ab", "/a", false),
            ("star alone matches empty", Path, "*", "", true),
            ("star alone matches anything", Path, "*", "/x/y", true),
            ("star matches empty run", Path, "/a*", "/a", true),
            (
                "star matches slashes",
                Path,
                "/api/*",
                "/api/v1/users",
                true,
            ),
            ("star in the middle", Path, "/a*z", "/a/b/c/z", true),
            ("star needs the suffix", Path, "/a*z", "/a/b/c/y", false),
            ("suffix after backtracking", Path, "*ab", "aaab", true),
            ("two stars", Path, "*/v?/*", "/api/v2/users", true),
            ("double star is one star", Path, "/a**b", "/ab", true),
            ("question mark is one", Path, "/v?", "/v1", true),
            ("question mark not none", Path, "/v?", "/v", false),
            ("question mark not two", Path, "/v?", "/v10", false),
            ("question marks count", Path, "/??", "/ab", true),
            ("anchored at start", Path, "a", "ba", false),
        ]);
    }

    #[test]
    fn question_mark_takes_one_character_not_one_byte() {
        check(&[
            ("two-byte é is one", Path, "/caf?", "/café", true),
            ("three-byte € is one", Path, "/?", "/€", true),
            ("four-byte emoji is one", Path, "/?", "/🦀", true),
            ("multi-byte needs one ? only", Path, "/??", "/€", false),
            ("star then multi-byte literal", Path, "*é", "/café", true),
            ("multi-byte literal mismatch", Path, "/é", "/e", false),
            ("star backtracks over multi-byte", Path, "*€x", "€€€x", true),
        ]);
    }

    #[test]
    fn case_follows_the_kind() {
        check(&[
            (
                "host ignores case",
                Host,
                "API.example.com",
                "api.EXAMPLE.com",
                true,
            ),
            (
                "host wildcard ignores case",
                Host,
                "*.Example.COM",
                "www.example.com",
                true,
            ),
            ("path keeps case", Path, "/Api", "/api", false),
            ("path exact case", Path, "/Api", "/Api", true),
            (
                "header value ignores case",
                HeaderValue,
                "Mozilla*",
                "mozilla/5.0",
                true,
            ),
            ("query ignores case", Query, "Beta", "BETA", true),
            ("folding is ASCII only", HeaderValue, "É", "é", false),
        ]);
    }

    #[test]
    fn host_ignores_one_trailing_dot_on_either_side() {
        check(&[
            ("dot on input", Host, "example.com", "example.com.", true),
            ("dot on pattern", Host, "example.com.", "example.com", true),
            ("dot on both", Host, "example.com.", "example.com.", true),
            (
                "wildcard with dot on input",
                Host,
                "*.example.com",
                "a.example.com.",
                true,
            ),
            (
                "two dots are not one",
                Host,
                "example.com",
                "example.com..",
                false,
            ),
            ("path keeps its dot", Path, "/a", "/a.", false),
        ]);
    }

    #[test]
    fn query_escapes_stand_for_the_character() {
        check(&[
            ("escaped star is literal", Query, r"a\*", "a*", true),
            ("escaped star is not a wildcard", Query, r"a\*", "ab", false),
            ("escaped question mark", Query, r"\?", "?", true),
            ("escaped question mark not any", Query, r"\?", "x", false),
            ("escaped backslash", Query, r"a\\", r"a\", true),
            ("header has no escapes", HeaderValue, r"a\*", r"a\bc", true),
        ]);
    }

    #[test]
    fn empty_pattern_and_lone_backslash_are_refused() {
        assert_eq!(Pattern::compile("", Path), Err(PatternError::Empty));
        assert_eq!(Pattern::compile(".", Host), Err(PatternError::Empty));
        assert_eq!(
            Pattern::compile(r"ab\", Query),
            Err(PatternError::DanglingEscape(r"ab\".to_owned()))
        );
        // Outside query patterns a backslash is just a character.
        assert!(Pattern::compile(r"ab\", HeaderValue).is_ok());
    }

    #[test]
    fn hostile_input_matches_in_bounded_time() {
        // A classic blow-up for backtracking matchers; here it is quadratic at worst.
        let pattern = Pattern::compile("*a*a*a*a*a*a*a*b", Path).unwrap();
        let input = "a".repeat(20_000);
        let started = std::time::Instant::now();
        assert!(!pattern.matches(&input));
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
    }
}
