//! Finds the names a SQL or PL/pgSQL function body uses: which functions it calls, and which
//! user functions, relations and types it names without a schema. Under an empty search_path
//! (the apply worker's) those unqualified names do not resolve.
//!
//! A tokenizer, not a parser: comments and string literals are skipped, dollar-quoted text is
//! read as code (it usually is: EXECUTE strings, nested bodies). A relation counts when it
//! follows FROM, JOIN, INTO, UPDATE or TABLE or precedes `%TYPE`/`%ROWTYPE`; a type when it
//! follows `::`; a function when `(` follows.

use std::collections::BTreeSet;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    /// Lower-cased unless it was quoted.
    Word(String, bool),
    Punct(char),
    Cast,
    Other,
}

/// What a body names: every function it calls (qualified or not), and the user objects it
/// names without a schema, each as `name()`, `table name` or `type name`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Names {
    pub calls: BTreeSet<String>,
    pub unqualified: BTreeSet<String>,
}

/// User object names to look for (unquoted names as stored: usually lower case).
pub struct Known<'a> {
    pub functions: &'a BTreeSet<String>,
    pub relations: &'a BTreeSet<String>,
    pub types: &'a BTreeSet<String>,
}

pub fn scan(body: &str, known: &Known<'_>) -> Names {
    let tokens = tokenize(body);
    let mut names = Names::default();
    for (i, token) in tokens.iter().enumerate() {
        let Token::Word(word, _) = token else { continue };
        let before = i.checked_sub(1).and_then(|j| tokens.get(j));
        let after = tokens.get(i + 1);
        let qualified = before == Some(&Token::Punct('.'));
        if after == Some(&Token::Punct('.')) {
            continue; // a schema or table qualifier itself
        }
        if after == Some(&Token::Punct('(')) {
            if known.functions.contains(word) {
                names.calls.insert(word.clone());
                if !qualified {
                    names.unqualified.insert(format!("{word}()"));
                }
            }
            continue;
        }
        if qualified {
            continue;
        }
        let after_keyword = matches!(before, Some(Token::Word(k, false)) if ["from", "join", "into", "update", "table"].contains(&k.as_str()));
        if (after_keyword || after == Some(&Token::Punct('%'))) && known.relations.contains(word) {
            names.unqualified.insert(format!("table {word}"));
        } else if before == Some(&Token::Cast) && known.types.contains(word) {
            names.unqualified.insert(format!("type {word}"));
        }
    }
    names
}

fn tokenize(body: &str) -> Vec<Token> {
    let chars: Vec<char> = body.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c.is_whitespace() {
            i += 1;
        } else if c == '-' && next == Some('-') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == '\'' {
            let escapes = matches!(tokens.last(), Some(Token::Word(w, false)) if w == "e") && i > 0 && chars[i - 1].eq_ignore_ascii_case(&'e');
            i += 1;
            while i < chars.len() {
                if escapes && chars[i] == '\\' {
                    i += 2;
                } else if chars[i] == '\'' && chars.get(i + 1) == Some(&'\'') {
                    i += 2;
                } else if chars[i] == '\'' {
                    i += 1;
                    break;
                } else {
                    i += 1;
                }
            }
            tokens.push(Token::Other);
        } else if c == '"' {
            let mut word = String::new();
            i += 1;
            while i < chars.len() {
                if chars[i] == '"' && chars.get(i + 1) == Some(&'"') {
                    word.push('"');
                    i += 2;
                } else if chars[i] == '"' {
                    i += 1;
                    break;
                } else {
                    word.push(chars[i]);
                    i += 1;
                }
            }
            tokens.push(Token::Word(word, true));
        } else if c == '$' {
            // `$1`, or a dollar-quote delimiter `$tag$` / `$$`: the quoted text is read as code.
            i += 1;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            if chars.get(i) == Some(&'$') {
                i += 1;
            }
            tokens.push(Token::Other);
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '$') {
                i += 1;
            }
            tokens.push(Token::Word(chars[start..i].iter().collect::<String>().to_lowercase(), false));
        } else if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            tokens.push(Token::Other);
        } else if c == ':' && next == Some(':') {
            tokens.push(Token::Cast);
            i += 2;
        } else {
            tokens.push(Token::Punct(c));
            i += 1;
        }
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn names(body: &str) -> Names {
        let (functions, relations, types) = (set(&["is_ok_inner", "helper", "is_ok"]), set(&["items", "lookup"]), set(&["mood"]));
        scan(body, &Known { functions: &functions, relations: &relations, types: &types })
    }

    #[test]
    fn unqualified_call_is_found_qualified_is_not() {
        let n = names("select is_ok_inner(j)");
        assert_eq!(n.unqualified, set(&["is_ok_inner()"]));
        assert_eq!(n.calls, set(&["is_ok_inner"]));
        let n = names("select public.is_ok_inner(j) and pg_catalog.length('x') > 0 and length(j::text) > 1");
        assert!(n.unqualified.is_empty(), "{n:?}");
        assert_eq!(n.calls, set(&["is_ok_inner"]), "qualified calls are still followed");
    }

    #[test]
    fn relations_types_and_plpgsql() {
        let body = "DECLARE r items%ROWTYPE; m text; BEGIN
            SELECT * INTO r FROM lookup WHERE k = 'from items'; -- from items in a comment
            /* select helper() */ m := 'happy'::mood; PERFORM Helper(1);
            EXECUTE $q$ select 1 from public.items $q$;
            RETURN r.x IS NOT NULL; END";
        let n = names(body);
        assert_eq!(n.unqualified, set(&["table items", "table lookup", "type mood", "helper()"]), "{n:?}");
    }

    #[test]
    fn strings_and_quoted_names() {
        let n = names(r#"select 'is_ok_inner(' || E'it\'s helper(' , "is_ok"(1), "Helper"(2)"#);
        assert_eq!(n.unqualified, set(&["is_ok()"]), "{n:?}");
    }
}
