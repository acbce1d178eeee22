//! Cutting a SQL-level PREPARE statement out of the query string it came in, for the replay.
//!
//! `pg_prepared_statements.statement` holds the *whole* query string a PREPARE was part of:
//! after `PREPARE p AS SELECT 1; INSERT INTO audit VALUES ('once')` it shows all of that for
//! `p`, and executing it on new would insert a second row. So the replay never executes that
//! text: it executes the one statement `PREPARE p ...` cut out of it, found by a lexer that
//! follows Postgres' own rules for what can hide a `;` (quotes, quoted identifiers, dollar
//! quotes, nested comments). Where it cannot be sure, the session is unmovable, with the
//! reason, instead of a guess:
//! - no statement `PREPARE <name> (` or `PREPARE <name> AS` in the text: the statement was
//!   prepared by a function or a DO block, whose text is not that PREPARE;
//! - more than one such statement: which definition survived depends on what failed;
//! - a backslash inside a quoted string: such a string ends at a different place with
//!   `standard_conforming_strings` on and off (and in an `E'...'` string);
//! - an unterminated quote or comment;
//! - bytes above 127 under a client encoding whose multibyte characters can contain ASCII
//!   bytes such as a quote: the text comes in the client's encoding.

use std::borrow::Cow;

/// Client encodings in which a multibyte character can contain bytes below 128.
const ASCII_UNSAFE_ENCODINGS: &[&str] = &["SJIS", "SHIFT_JIS_2004", "BIG5", "GBK", "UHC", "GB18030", "JOHAB"];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A keyword or an unquoted identifier.
    Word,
    QuotedIdentifier,
    Semicolon,
    /// Anything else: literals, parameters, operators, punctuation.
    Other,
}

#[derive(Clone, Copy)]
struct Token {
    kind: Kind,
    start: usize,
    end: usize,
}

/// The statement `PREPARE <name> ...` (without its `;`) in `query`, the query string
/// `pg_prepared_statements` shows for the prepared statement `name`; or why it cannot be
/// isolated. `query` and `name` are in the session's client encoding.
pub fn isolate_prepare<'a>(query: &'a [u8], name: &[u8], client_encoding: &str) -> Result<&'a [u8], &'static str> {
    if ASCII_UNSAFE_ENCODINGS.iter().any(|e| e.eq_ignore_ascii_case(client_encoding)) && !query.is_ascii() {
        return Err("its query string is in a client encoding whose characters can contain quote bytes");
    }
    let tokens = tokenize(query)?;
    let mut found = None;
    for statement in tokens.split(|t| t.kind == Kind::Semicolon) {
        let [keyword, target, next, ..] = statement else { continue };
        let defines_name = is_word(query, keyword, "prepare")
            && identifier(query, target).is_some_and(|n| n.as_ref() == name)
            && (is_word(query, next, "as") || &query[next.start..next.end] == b"(");
        if !defines_name {
            continue;
        }
        if found.is_some() {
            return Err("the query string it came in prepares that name more than once");
        }
        let end = statement.last().map_or(target.end, |t| t.end);
        found = Some(&query[keyword.start..end]);
    }
    found.ok_or("the query string it came in holds no PREPARE of that name: prepared by a function or DO block")
}

fn is_word(text: &[u8], token: &Token, word: &str) -> bool {
    token.kind == Kind::Word && text[token.start..token.end].eq_ignore_ascii_case(word.as_bytes())
}

/// The name an identifier token stands for: unquoted ones fold to lower case (ASCII only:
/// anything else that Postgres might fold makes the names differ, so the session stays put).
fn identifier<'a>(text: &'a [u8], token: &Token) -> Option<Cow<'a, [u8]>> {
    let raw = &text[token.start..token.end];
    match token.kind {
        Kind::Word => Some(Cow::Owned(raw.to_ascii_lowercase())),
        Kind::QuotedIdentifier => {
            let inner = &raw[1..raw.len() - 1];
            if inner.windows(2).any(|w| w == b"\"\"") {
                let mut out = Vec::with_capacity(inner.len());
                let mut i = 0;
                while i < inner.len() {
                    out.push(inner[i]);
                    i += if inner[i] == b'"' { 2 } else { 1 };
                }
                Some(Cow::Owned(out))
            } else {
                Some(Cow::Borrowed(inner))
            }
        }
        _ => None,
    }
}

fn is_identifier_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

/// After the first character: also digits and `$` (so `a$b$` is one identifier, not a quote).
fn is_identifier_char(b: u8) -> bool {
    is_identifier_start(b) || b.is_ascii_digit() || b == b'$'
}

/// Splits `text` into tokens; whitespace and comments are dropped.
fn tokenize(text: &[u8]) -> Result<Vec<Token>, &'static str> {
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        let next = text.get(i + 1).copied();
        let (kind, end) = match b {
            b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => {
                i += 1;
                continue;
            }
            b'-' if next == Some(b'-') => {
                i = text[i..].iter().position(|&c| c == b'\n' || c == b'\r').map_or(text.len(), |p| i + p);
                continue;
            }
            b'/' if next == Some(b'*') => {
                i = block_comment_end(text, i)?;
                continue;
            }
            b'\'' => {
                let end = quoted_end(text, i, b'\'').ok_or("unterminated quoted string in its query string")?;
                if text[i..end].contains(&b'\\') {
                    return Err("its query string has a backslash in a quoted string, which parses by standard_conforming_strings");
                }
                (Kind::Other, end)
            }
            b'"' => (Kind::QuotedIdentifier, quoted_end(text, i, b'"').ok_or("unterminated quoted identifier in its query string")?),
            b'$' if next.is_some_and(|c| c.is_ascii_digit()) => (Kind::Other, run_end(text, i + 1, |c| c.is_ascii_digit())),
            b'$' => match dollar_delimiter_end(text, i) {
                Some(open_end) => {
                    let delimiter = &text[i..open_end];
                    let close = find(&text[open_end..], delimiter).ok_or("unterminated dollar-quoted string in its query string")?;
                    (Kind::Other, open_end + close + delimiter.len())
                }
                None => (Kind::Other, i + 1),
            },
            b';' => (Kind::Semicolon, i + 1),
            _ if is_identifier_start(b) => (Kind::Word, run_end(text, i + 1, is_identifier_char)),
            // A number: digits, and letters, `_` and `.` as in 1e5, 0x1F, 1_000, 1.5.
            _ if b.is_ascii_digit() => (Kind::Other, run_end(text, i + 1, |c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.')),
            _ => (Kind::Other, i + 1),
        };
        tokens.push(Token { kind, start: i, end });
        i = end;
    }
    Ok(tokens)
}

fn run_end(text: &[u8], from: usize, mut keep: impl FnMut(u8) -> bool) -> usize {
    text[from..].iter().position(|&c| !keep(c)).map_or(text.len(), |p| from + p)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// End of a `'...'` or `"..."` starting at `start` (a doubled quote stands for itself).
fn quoted_end(text: &[u8], start: usize, quote: u8) -> Option<usize> {
    let mut j = start + 1;
    while j < text.len() {
        if text[j] == quote {
            if text.get(j + 1) == Some(&quote) {
                j += 2;
                continue;
            }
            return Some(j + 1);
        }
        j += 1;
    }
    None
}

/// End of the opening `$tag$` at `start`, if that is one: the tag is empty or an identifier
/// without `$`.
fn dollar_delimiter_end(text: &[u8], start: usize) -> Option<usize> {
    let mut j = start + 1;
    if text.get(j).is_some_and(|&c| is_identifier_start(c)) {
        j = run_end(text, j + 1, |c| is_identifier_start(c) || c.is_ascii_digit());
    }
    (text.get(j) == Some(&b'$')).then_some(j + 1)
}

/// End of the comment starting at `start`: Postgres' block comments nest.
fn block_comment_end(text: &[u8], start: usize) -> Result<usize, &'static str> {
    let mut depth = 0usize;
    let mut j = start;
    while j + 1 < text.len() {
        match (text[j], text[j + 1]) {
            (b'/', b'*') => {
                depth += 1;
                j += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                j += 2;
                if depth == 0 {
                    return Ok(j);
                }
            }
            _ => j += 1,
        }
    }
    Err("unterminated comment in its query string")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut<'a>(query: &'a str, name: &str) -> Result<&'a str, &'static str> {
        isolate_prepare(query.as_bytes(), name.as_bytes(), "UTF8").map(|s| std::str::from_utf8(s).unwrap())
    }

    #[test]
    fn cuts_the_prepare_out_of_its_query_string() {
        assert_eq!(cut("PREPARE p AS SELECT 1; INSERT INTO audit VALUES ('once')", "p"), Ok("PREPARE p AS SELECT 1"));
        assert_eq!(cut("  prepare P(int) as select $1 * 2 ; ", "p"), Ok("prepare P(int) as select $1 * 2"));
        assert_eq!(cut("SET x = 1; PREPARE \"My \"\"q\"\"\" AS SELECT 2; LISTEN c", "My \"q\""), Ok("PREPARE \"My \"\"q\"\"\" AS SELECT 2"));
        assert_eq!(cut("PREPARE a AS SELECT 1; PREPARE b AS SELECT 2", "b"), Ok("PREPARE b AS SELECT 2"));
        assert_eq!(
            cut("/* ; PREPARE q AS x /* nested ; */ */ SELECT 'a;b', $d$;$d$; PREPARE q AS SELECT $1::text || ';' -- ; INSERT", "q"),
            Ok("PREPARE q AS SELECT $1::text || ';'")
        );
        assert_eq!(cut("PREPARE q AS SELECT $$ ; $$ || $x$ $$ ; $x$; DELETE FROM t", "q"), Ok("PREPARE q AS SELECT $$ ; $$ || $x$ $$ ; $x$"));
        assert_eq!(cut("PREPARE q AS SELECT a$b$ FROM t; DELETE FROM t -- $b$", "q"), Ok("PREPARE q AS SELECT a$b$ FROM t"));
        assert_eq!(cut("PREPARE q AS SELECT 'it''s'; DELETE FROM t", "q"), Ok("PREPARE q AS SELECT 'it''s'"));
    }

    #[test]
    fn refuses_what_it_cannot_be_sure_of() {
        for (query, name) in [
            ("PREPARE r AS SELECT 1; DEALLOCATE r; PREPARE r AS SELECT 2", "r"),
            ("DO $$ BEGIN EXECUTE 'PREPARE p AS SELECT 1'; END $$", "p"),
            ("SELECT make_it()", "p"),
            ("PREPARE p AS SELECT 'a\\'; DELETE FROM t; --'", "p"),
            ("PREPARE p AS SELECT E'a\\'; DELETE FROM t; --'", "p"),
            ("PREPARE p AS SELECT 'open", "p"),
            ("PREPARE p AS SELECT 1 /* open /* */", "p"),
            ("PREPARE p AS SELECT $x$ open", "p"),
            ("PREPARE \"P\" AS SELECT 1", "p"),
            ("PREPARE TRANSACTION 'p'", "transaction"),
            ("PREPARE U&\"p\" AS SELECT 1", "u"),
        ] {
            assert!(cut(query, name).is_err(), "{query:?} for {name:?} gave {:?}", cut(query, name));
        }
    }

    #[test]
    fn refuses_non_ascii_in_encodings_with_ascii_trail_bytes() {
        // "ソ" in SJIS is 0x83 0x5C: its second byte is a backslash.
        let sjis = b"PREPARE p AS SELECT '\x83\x5c'; DELETE FROM t";
        assert!(isolate_prepare(sjis, b"p", "SJIS").is_err());
        let ascii = b"PREPARE p AS SELECT 'x'; DELETE FROM t";
        assert_eq!(isolate_prepare(ascii, b"p", "SJIS"), Ok(&b"PREPARE p AS SELECT 'x'"[..]));
        let latin1 = b"PREPARE p AS SELECT 'caf\xe9'; DELETE FROM t";
        assert_eq!(isolate_prepare(latin1, b"p", "LATIN1"), Ok(&b"PREPARE p AS SELECT 'caf\xe9'"[..]));
    }
}
