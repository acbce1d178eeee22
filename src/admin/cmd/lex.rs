//! The console's lexer: statements split at `;` only outside quotes, `--` comments only outside
//! quotes, words and `option=value` tokens with quoted values. `'...'` and `"..."` quote as in
//! SQL, a doubled quote standing for itself.

use crate::admin::reply::AdminError;

/// Splits a simple query into statements at each `;` outside quotes; drops `--` comments that
/// start outside quotes (to the end of the line) and empty statements. An unterminated quote
/// runs to the end of the query (the statement's parser reports it).
pub fn split_statements(query: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    let mut chars = query.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                current.push(c);
                // A doubled quote leaves and re-enters the quoted text: same outcome.
                if c == q {
                    quote = None;
                }
            }
            None => match c {
                '\'' | '"' => {
                    quote = Some(c);
                    current.push(c);
                }
                '-' if chars.peek() == Some(&'-') => {
                    // A comment: skip to the end of the line, which still separates words.
                    for skipped in chars.by_ref() {
                        if skipped == '\n' {
                            break;
                        }
                    }
                    current.push('\n');
                }
                ';' => statements.push(std::mem::take(&mut current)),
                _ => current.push(c),
            },
        }
    }
    statements.push(current);
    statements.into_iter().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect()
}

/// One token of a statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Token {
    /// Unquoted text up to whitespace, `=`, `,` or a quote.
    Word(String),
    /// The text between quotes, doubled quotes undone.
    Quoted(String),
    Equals,
    Comma,
}

impl Token {
    /// The token as the user wrote it, for error messages.
    pub fn shown(&self) -> String {
        match self {
            Token::Word(w) => w.clone(),
            Token::Quoted(q) => format!("'{}'", q.replace('\'', "''")),
            Token::Equals => "=".into(),
            Token::Comma => ",".into(),
        }
    }
}

/// The tokens of one statement; an unterminated quote is a syntax error (42601).
pub fn tokens(statement: &str) -> Result<Vec<Token>, AdminError> {
    let mut out = Vec::new();
    let mut chars = statement.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '=' => {
                chars.next();
                out.push(Token::Equals);
            }
            ',' => {
                chars.next();
                out.push(Token::Comma);
            }
            '\'' | '"' => {
                chars.next();
                let mut text = String::new();
                loop {
                    match chars.next() {
                        None => return Err(AdminError::syntax(format!("unterminated quoted string: {c}{text}"))),
                        Some(q) if q == c && chars.peek() == Some(&c) => {
                            chars.next();
                            text.push(c);
                        }
                        Some(q) if q == c => break,
                        Some(other) => text.push(other),
                    }
                }
                out.push(Token::Quoted(text));
            }
            _ => {
                let mut word = String::new();
                while let Some(&w) = chars.peek() {
                    if w.is_whitespace() || matches!(w, '=' | ',' | '\'' | '"') {
                        break;
                    }
                    word.push(w);
                    chars.next();
                }
                out.push(Token::Word(word));
            }
        }
    }
    Ok(out)
}

/// Whitespace-separated words of a statement; quoted text (quotes kept) stays in one word.
/// An unterminated quote is a syntax error (42601).
pub fn words(statement: &str) -> Result<Vec<String>, AdminError> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    for c in statement.chars() {
        match quote {
            Some(q) => {
                current.push(c);
                if c == q {
                    quote = None;
                }
            }
            None if c.is_whitespace() => {
                if !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
            }
            None => {
                if c == '\'' || c == '"' {
                    quote = Some(c);
                }
                current.push(c);
            }
        }
    }
    if let Some(q) = quote {
        return Err(AdminError::syntax(format!("unterminated quoted string: {}", current.trim_start_matches(|c| c != q))));
    }
    if !current.is_empty() {
        out.push(current);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_on_semicolons_outside_quotes() {
        assert_eq!(split_statements("SHOW STATUS;"), vec!["SHOW STATUS"]);
        assert_eq!(split_statements(" show status ; check ;; "), vec!["show status", "check"]);
        assert_eq!(split_statements("-- just a comment\nCHECK -- trailing"), vec!["CHECK"]);
        assert!(split_statements(" ; ").is_empty());
        assert_eq!(split_statements("CUTOVER drain_timeout='1s; DROP TABLE x'"), vec!["CUTOVER drain_timeout='1s; DROP TABLE x'"]);
        assert_eq!(split_statements("CUTOVER drain_timeout=\"1s;x\"; CHECK"), vec!["CUTOVER drain_timeout=\"1s;x\"", "CHECK"]);
        // Doubled quotes stay inside the string.
        assert_eq!(split_statements("PAUSE 'it''s; fine'; CHECK"), vec!["PAUSE 'it''s; fine'", "CHECK"]);
        // `--` inside quotes is text; a quote inside a comment is not a quote.
        assert_eq!(split_statements("PAUSE '--x;y'"), vec!["PAUSE '--x;y'"]);
        assert_eq!(split_statements("CHECK -- it's\n; SHOW STATUS"), vec!["CHECK", "SHOW STATUS"]);
        // A comment separates words like a newline.
        assert_eq!(split_statements("SHOW--x\nSTATUS"), vec!["SHOW\nSTATUS"]);
        // An unterminated quote runs to the end.
        assert_eq!(split_statements("CUTOVER drain_timeout='1s; DROP"), vec!["CUTOVER drain_timeout='1s; DROP"]);
        // A lone dash is text.
        assert_eq!(split_statements("PAUSE -1s"), vec!["PAUSE -1s"]);
    }

    #[test]
    fn tokens_keep_quoted_text_whole() {
        use Token::*;
        assert_eq!(
            tokens("drain_timeout = '1s; x', fence_old=\"tr\"\"ue\" a'b'").ok(),
            Some(vec![
                Word("drain_timeout".into()),
                Equals,
                Quoted("1s; x".into()),
                Comma,
                Word("fence_old".into()),
                Equals,
                Quoted("tr\"ue".into()),
                Word("a".into()),
                Quoted("b".into()),
            ])
        );
        assert_eq!(tokens("x='it''s'").ok(), Some(vec![Word("x".into()), Equals, Quoted("it's".into())]));
        assert_eq!(tokens("x='open").err().map(|e| e.sqlstate), Some("42601"));
        assert_eq!(Quoted("it's".into()).shown(), "'it''s'");
    }

    #[test]
    fn words_keep_quoted_text_whole() {
        assert_eq!(words("CUTOVER  a='x y' b=\"z\"").ok(), Some(vec!["CUTOVER".to_string(), "a='x y'".into(), "b=\"z\"".into()]));
        assert_eq!(words("CUTOVER a='x y").err().map(|e| e.sqlstate), Some("42601"));
        assert_eq!(words("  ").ok(), Some(vec![]));
    }
}
