//! Vault Agent's templates (consul-template, Go's `text/template`) read
//! into what they write: literal text and fields of KV v2 secrets. Only
//! the forms Vault's injector documentation uses are understood:
//!
//! - `{{ with secret "<mount>/data/<name>" }}` … `{{ end }}` (also without
//!   `data/`, which consul-template adds for KV v2 mounts);
//! - `{{ .Data.data.<field> }}` and `{{ index .Data.data "<field>" }}`;
//! - `{{ printf "<format>" … }}` with `%s`, `%v` and `%%`;
//! - string literals, comments, and the trim markers `{{-` and `-}}`.
//!
//! Anything else (`range`, `if`, pipes, functions, other secrets engines)
//! is refused with the reason: a template translates exactly or not at all.
//! [`minijinja`] writes the result as a Rotor template.

use std::fmt::Write as _;

use rotor_contract::names::validate_secret_name;

/// One field of a KV v2 secret.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Field {
    /// The secret's name in Rotor's Vault store (the path under the mount).
    pub secret: String,
    /// The field of the secret's data.
    pub key: String,
}

/// What a template writes, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Field(Field),
}

/// The pieces `source` writes, or why it cannot be translated. `mount` is
/// the KV v2 mount of the Rotor store the secrets are read from.
pub fn translate(source: &str, mount: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut scope: Vec<String> = Vec::new();
    for node in trimmed(lex(source)?) {
        match node {
            Node::Text(text) => push_text(&mut pieces, text),
            Node::Action(body) => action(body, mount, &mut scope, &mut pieces)?,
        }
    }
    if !scope.is_empty() {
        return Err("has a {{ with }} without its {{ end }}".to_owned());
    }
    Ok(pieces)
}

/// The Rotor secret name of a Vault path on the KV v2 mount `mount`, or
/// why it is not one.
pub fn kv_secret_name(path: &str, mount: &str) -> Result<String, String> {
    let trimmed = path.trim_start_matches('/');
    if path.contains('?') {
        return Err(format!(
            "reads {path:?} at a fixed version; Rotor serves the CURRENT version"
        ));
    }
    let Some(rest) = trimmed
        .strip_prefix(mount)
        .and_then(|r| r.strip_prefix('/'))
    else {
        return Err(format!(
            "reads {path:?}, which is not on the KV v2 mount {mount:?} (--mount); Rotor's Vault store reads KV v2 secrets only, not dynamic secrets engines (database, pki, aws, ...)"
        ));
    };
    if rest.starts_with("metadata/") {
        return Err(format!(
            "reads {path:?}, a KV v2 metadata path; Rotor reads secrets' data"
        ));
    }
    let name = rest.strip_prefix("data/").unwrap_or(rest);
    validate_secret_name(name).map_err(|e| {
        format!(
            "reads {path:?}, whose secret name {name:?} {}; expected {}",
            e.problem, e.expected
        )
    })?;
    Ok(name.to_owned())
}

/// `pieces` as a Rotor (minijinja) template, each field read from the
/// file `file_of` names. Text that minijinja would read as syntax is
/// written as a string literal. minijinja drops one trailing newline of a
/// template, and Vault keeps it, so a template ending in one gets another.
pub fn minijinja(pieces: &[Piece], file_of: &dyn Fn(&Field) -> String) -> String {
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Text(text) if ["{{", "{%", "{#"].iter().any(|m| text.contains(m)) => {
                let escaped = text
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n")
                    .replace('\r', "\\r")
                    .replace('\t', "\\t");
                let _ = write!(out, "{{{{ \"{escaped}\" }}}}");
            }
            Piece::Text(text) => out.push_str(text),
            Piece::Field(field) => {
                let _ = write!(out, "{{{{ secrets[\"{}\"] }}}}", file_of(field));
            }
        }
    }
    if out.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// A template's text and actions (`{{ … }}`), with their trim markers.
enum Token<'a> {
    Text(&'a str),
    Action {
        body: &'a str,
        trim_left: bool,
        trim_right: bool,
    },
}

enum Node<'a> {
    Text(&'a str),
    Action(&'a str),
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn lex(source: &str) -> Result<Vec<Token<'_>>, String> {
    let mut tokens = Vec::new();
    let mut rest = source;
    while let Some(start) = rest.find("{{") {
        tokens.push(Token::Text(&rest[..start]));
        let mut inner = &rest[start + 2..];
        let trim_left = inner.starts_with('-') && inner[1..].starts_with(is_space);
        if trim_left {
            inner = &inner[1..];
        }
        let end = closing(inner).ok_or("has a {{ without its }}")?;
        let mut body = &inner[..end];
        let trim_right = body.ends_with('-') && body[..body.len() - 1].ends_with(is_space);
        if trim_right {
            body = &body[..body.len() - 1];
        }
        tokens.push(Token::Action {
            body: body.trim_matches(is_space),
            trim_left,
            trim_right,
        });
        rest = &inner[end + 2..];
    }
    tokens.push(Token::Text(rest));
    Ok(tokens)
}

/// Where the action's `}}` is, past string literals and comments.
fn closing(inner: &str) -> Option<usize> {
    let bytes = inner.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'`' => i += inner[i + 1..].find('`')? + 1,
            b'/' if inner[i..].starts_with("/*") => i += inner[i..].find("*/")? + 1,
            b'}' if inner[i..].starts_with("}}") => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// The tokens with the trim markers applied to the text around them.
fn trimmed(tokens: Vec<Token<'_>>) -> Vec<Node<'_>> {
    let mut nodes: Vec<Node<'_>> = Vec::with_capacity(tokens.len());
    let mut trim_next = false;
    for token in tokens {
        match token {
            Token::Text(text) => {
                let text = if trim_next {
                    text.trim_start_matches(is_space)
                } else {
                    text
                };
                nodes.push(Node::Text(text));
                trim_next = false;
            }
            Token::Action {
                body,
                trim_left,
                trim_right,
            } => {
                if trim_left && let Some(Node::Text(prev)) = nodes.last_mut() {
                    *prev = prev.trim_end_matches(is_space);
                }
                nodes.push(Node::Action(body));
                trim_next = trim_right;
            }
        }
    }
    nodes
}

fn push_text(pieces: &mut Vec<Piece>, text: &str) {
    if text.is_empty() {
        return;
    }
    if let Some(Piece::Text(last)) = pieces.last_mut() {
        last.push_str(text);
    } else {
        pieces.push(Piece::Text(text.to_owned()));
    }
}

/// A word of an action: a string literal or anything else.
#[derive(Debug, PartialEq)]
enum Word {
    Str(String),
    Bare(String),
}

fn words(body: &str) -> Result<Vec<Word>, String> {
    let mut out = Vec::new();
    let mut chars = body.chars().peekable();
    while let Some(&c) = chars.peek() {
        if is_space(c) {
            chars.next();
        } else if c == '"' {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next() {
                    None => return Err("has an unterminated string".to_owned()),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some('n') => s.push('\n'),
                        Some('t') => s.push('\t'),
                        Some('r') => s.push('\r'),
                        Some(c @ ('"' | '\\')) => s.push(c),
                        other => {
                            return Err(format!(
                                "has the string escape \\{}, which is not translated",
                                other.map(String::from).unwrap_or_default()
                            ));
                        }
                    },
                    Some(c) => s.push(c),
                }
            }
            out.push(Word::Str(s));
        } else if c == '`' {
            chars.next();
            let s: String = chars.by_ref().take_while(|c| *c != '`').collect();
            out.push(Word::Str(s));
        } else {
            let mut s = String::new();
            while let Some(&c) = chars.peek() {
                if is_space(c) || c == '"' || c == '`' {
                    break;
                }
                s.push(c);
                chars.next();
            }
            out.push(Word::Bare(s));
        }
    }
    Ok(out)
}

fn action(
    body: &str,
    mount: &str,
    scope: &mut Vec<String>,
    pieces: &mut Vec<Piece>,
) -> Result<(), String> {
    if body.is_empty() || (body.starts_with("/*") && body.ends_with("*/")) {
        return Ok(());
    }
    let words = words(body)?;
    let bare = |i: usize| match words.get(i) {
        Some(Word::Bare(w)) => Some(w.as_str()),
        _ => None,
    };
    match bare(0) {
        Some("with") => match &words[1..] {
            [Word::Bare(f), Word::Str(path)] if f == "secret" => {
                scope.push(kv_secret_name(path, mount)?);
                Ok(())
            }
            [Word::Bare(f), Word::Str(_), Word::Str(param), ..] if f == "secret" => Err(format!(
                "passes the parameter {param:?} to secret, which only dynamic secrets engines take; Rotor reads KV v2 secrets"
            )),
            _ => Err(format!("has {{{{ {body} }}}}, which is not translated")),
        },
        Some("end") if words.len() == 1 => match scope.pop() {
            Some(_) => Ok(()),
            None => Err("has an {{ end }} without its {{ with }}".to_owned()),
        },
        Some("range") => Err(
            "lists a secret's fields with {{ range }}, which Rotor's templates cannot: they see each secret as text; name each field instead (rotor.dev/secret.<file>: <name>#<field>)"
                .to_owned(),
        ),
        Some(k @ ("if" | "else" | "define" | "template" | "block" | "break" | "continue")) => {
            Err(format!("has {{{{ {k} }}}}, which is not translated"))
        }
        _ => {
            if let Some(f) = words
                .iter()
                .position(|w| *w == Word::Bare("|".to_owned()))
                .and_then(|i| bare(i + 1))
            {
                return Err(format!(
                    "pipes a value into {f}, which is not translated"
                ));
            }
            for piece in expression(&words, scope.last())? {
                match piece {
                    Piece::Text(t) => push_text(pieces, &t),
                    field @ Piece::Field(_) => pieces.push(field),
                }
            }
            Ok(())
        }
    }
}

fn expression(words: &[Word], secret: Option<&String>) -> Result<Vec<Piece>, String> {
    match words {
        [Word::Str(s)] => Ok(vec![Piece::Text(s.clone())]),
        [Word::Bare(path)] if path.starts_with('.') => Ok(vec![field(path, secret)?]),
        [Word::Bare(f), Word::Bare(map), Word::Str(key)] if f == "index" && map == ".Data.data" => {
            Ok(vec![field(&format!(".Data.data.{key}"), secret)?])
        }
        [Word::Bare(f), Word::Str(format), args @ ..] if f == "printf" => {
            printf(format, args, secret)
        }
        [Word::Bare(f), ..] => Err(format!("calls {f}, which is not translated")),
        _ => Err("has an action that is not translated".to_owned()),
    }
}

fn field(path: &str, secret: Option<&String>) -> Result<Piece, String> {
    let Some(secret) = secret else {
        return Err(format!(
            "reads {path} outside {{{{ with secret \"…\" }}}}, which is not translated"
        ));
    };
    if let Some(key) = path.strip_prefix(".Data.data.") {
        if key.is_empty() {
            return Err(format!("reads {path}, which is not a field"));
        }
        return Ok(Piece::Field(Field {
            secret: secret.clone(),
            key: key.to_owned(),
        }));
    }
    if path == ".Data.data" || path == ".Data" {
        return Err(format!(
            "prints {path} whole, as a Go map, which Rotor cannot write"
        ));
    }
    if path.starts_with(".Data.metadata") {
        return Err(format!(
            "reads {path}, the secret's metadata, which Rotor does not expose"
        ));
    }
    Err(format!(
        "reads {path}; a KV v2 secret's fields are .Data.data.<field> (.Data.<field> is how KV v1 and dynamic secrets engines answer, which Rotor does not read)"
    ))
}

fn printf(format: &str, args: &[Word], secret: Option<&String>) -> Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut args = args.iter();
    let mut text = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            text.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => text.push('%'),
            Some('s' | 'v') => {
                out.push(Piece::Text(std::mem::take(&mut text)));
                match args.next() {
                    Some(Word::Str(s)) => out.push(Piece::Text(s.clone())),
                    Some(Word::Bare(path)) if path.starts_with('.') => {
                        out.push(field(path, secret)?)
                    }
                    Some(Word::Bare(w)) => {
                        return Err(format!("passes {w} to printf, which is not translated"));
                    }
                    None => return Err("has a printf with fewer arguments than verbs".to_owned()),
                }
            }
            other => {
                return Err(format!(
                    "has the printf verb %{}, which is not translated (only %s, %v and %%)",
                    other.map(String::from).unwrap_or_default()
                ));
            }
        }
    }
    if args.next().is_some() {
        return Err("has a printf with more arguments than verbs".to_owned());
    }
    out.push(Piece::Text(text));
    out.retain(|p| !matches!(p, Piece::Text(t) if t.is_empty()));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(secret: &str, key: &str) -> Piece {
        Piece::Field(Field {
            secret: secret.to_owned(),
            key: key.to_owned(),
        })
    }

    fn text(t: &str) -> Piece {
        Piece::Text(t.to_owned())
    }

    #[test]
    fn the_documented_kv_forms_translate() {
        // Vault's Kubernetes sidecar tutorial, as a YAML block scalar (with
        // its final newline).
        let source = "{{- with secret \"secret/data/database/config\" -}}\npostgresql://{{ .Data.data.username }}:{{ .Data.data.password }}@postgres:5432/wizard\n{{- end -}}\n";
        assert_eq!(
            translate(source, "secret").unwrap(),
            [
                text("postgresql://"),
                field("database/config", "username"),
                text(":"),
                field("database/config", "password"),
                text("@postgres:5432/wizard"),
            ]
        );
        // The environment variable example: `{{ with` keeps what precedes it.
        let source = "{{ with secret \"secret/data/web\" -}}\n  export api_key=\"{{ .Data.data.payments_api_key }}\"\n{{- end }}\n";
        assert_eq!(
            translate(source, "secret").unwrap(),
            [
                text("export api_key=\""),
                field("web", "payments_api_key"),
                text("\"\n"),
            ]
        );
    }

    #[test]
    fn index_printf_literals_comments_and_paths_without_data() {
        let source = "{{/* a comment */}}{{ with secret \"/kv/apps/x\" }}{{ index .Data.data \"api-key\" }}|{{ printf \"%s@%v:100%%\" .Data.data.user \"host\" }}{{ \"}}\" }}{{ end }}";
        assert_eq!(
            translate(source, "kv").unwrap(),
            [
                field("apps/x", "api-key"),
                text("|"),
                field("apps/x", "user"),
                text("@host:100%}}"),
            ]
        );
    }

    #[test]
    fn everything_else_is_refused_with_the_reason() {
        for (source, reason) in [
            (
                "{{ with secret \"database/creds/db-app\" }}{{ .Data.username }}{{ end }}",
                "not on the KV v2 mount \"secret\"",
            ),
            (
                "{{ with secret \"secret/data/x\" }}{{ .Data.username }}{{ end }}",
                ".Data.data.<field>",
            ),
            (
                "{{ with secret \"secret/data/x\" }}{{ range $k, $v := .Data.data }}{{ $k }}={{ $v }}\n{{ end }}{{ end }}",
                "{{ range }}",
            ),
            (
                "{{ with secret \"secret/data/x\" }}{{ .Data.data.k | base64Decode }}{{ end }}",
                "pipes a value into base64Decode",
            ),
            (
                "{{ with secret \"pki/issue/app\" \"common_name=a.example.com\" }}{{ end }}",
                "parameter \"common_name=a.example.com\"",
            ),
            ("{{ .Data.data.k }}", "outside {{ with secret"),
            (
                "{{ with secret \"secret/data/x\" }}",
                "without its {{ end }}",
            ),
            ("{{ end }}", "without its {{ with }}"),
            ("{{ with secret \"secret/data/x\" }", "without its }}"),
            (
                "{{ with secret \"secret/data/x?version=2\" }}{{ end }}",
                "fixed version",
            ),
            (
                "{{ with secret \"secret/data/x\" }}{{ printf \"%d\" .Data.data.n }}{{ end }}",
                "verb %d",
            ),
            (
                "{{ with secret \"secret/metadata/x\" }}{{ end }}",
                "metadata path",
            ),
            (
                "{{ with secret \"secret/data/../x\" }}{{ end }}",
                "secret name",
            ),
            ("{{ env \"HOME\" }}", "calls env"),
            ("{{ if true }}x{{ end }}", "{{ if }}"),
        ] {
            let err = translate(source, "secret").unwrap_err();
            assert!(err.contains(reason), "{source:?}: {err}");
        }
    }

    #[test]
    fn minijinja_text_is_kept_verbatim() {
        let pieces = [text("a {{ b }} \"c\"\n"), field("s", "k"), text("\n")];
        let out = minijinja(&pieces, &|f| format!("f.{}", f.key));
        assert_eq!(
            out,
            "{{ \"a {{ b }} \\\"c\\\"\\n\" }}{{ secrets[\"f.k\"] }}\n\n"
        );
    }
}
