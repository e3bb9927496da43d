//! The downward-API annotations file: one `key="value"` line per
//! annotation, the value quoted as Go's `%q` does (the kubelet writes it with
//! `fmt.Sprintf("%s=%q\n", k, v)`).

use std::collections::BTreeMap;

/// Parses the file's text into annotations. A malformed line is an error
/// naming the line number.
pub fn parse(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (key, quoted) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: no '=' (expected key=\"value\")", i + 1))?;
        let value =
            unquote(quoted).map_err(|problem| format!("line {} ({key}): {problem}", i + 1))?;
        out.insert(key.to_owned(), value);
    }
    Ok(out)
}

/// Undoes Go's `strconv.Quote`.
fn unquote(s: &str) -> Result<String, String> {
    let inner = s
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .ok_or("the value is not in double quotes")?;
    let mut bytes = Vec::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buf = [0u8; 4];
            bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        let esc = chars.next().ok_or("the value ends in a lone backslash")?;
        let simple = match esc {
            'a' => Some(0x07),
            'b' => Some(0x08),
            'f' => Some(0x0c),
            'n' => Some(b'\n'),
            'r' => Some(b'\r'),
            't' => Some(b'\t'),
            'v' => Some(0x0b),
            '\\' => Some(b'\\'),
            '"' => Some(b'"'),
            '\'' => Some(b'\''),
            _ => None,
        };
        if let Some(b) = simple {
            bytes.push(b);
            continue;
        }
        let mut take = |n: usize, radix: u32| -> Result<u32, String> {
            let digits: String = chars.by_ref().take(n).collect();
            if digits.len() != n {
                return Err(format!("the escape \\{esc} is cut short"));
            }
            u32::from_str_radix(&digits, radix)
                .map_err(|_| format!("the escape \\{esc}{digits} is not valid"))
        };
        match esc {
            'x' => bytes.push(take(2, 16)? as u8),
            'u' | 'U' => {
                let code = take(if esc == 'u' { 4 } else { 8 }, 16)?;
                let c =
                    char::from_u32(code).ok_or(format!("\\{esc}{code:x} is not a character"))?;
                let mut buf = [0u8; 4];
                bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            '0'..='7' => {
                let rest: String = chars.by_ref().take(2).collect();
                let v = u32::from_str_radix(&format!("{esc}{rest}"), 8)
                    .ok()
                    .filter(|v| *v <= 0xff && rest.len() == 2)
                    .ok_or("an octal escape is not valid")?;
                bytes.push(v as u8);
            }
            other => return Err(format!("unknown escape \\{other}")),
        }
    }
    String::from_utf8(bytes).map_err(|_| "the value is not valid UTF-8".to_owned())
}

/// Formats annotations the way the kubelet does, for tests and `rotor demo`.
pub fn format(annotations: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    for (k, v) in annotations {
        out.push_str(k);
        out.push('=');
        out.push('"');
        for c in v.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push_str("\"\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubelet_output() {
        // As the kubelet writes it: sorted keys, Go-quoted values.
        let text = concat!(
            "kubernetes.io/config.seen=\"2026-11-24T03:00:00.000000000Z\"\n",
            "rotor.dev/inject=\"true\"\n",
            "rotor.dev/template.cfg=\"user: app\\npass: {{ secrets[\\\"db\\\"] }}\\n\"\n",
            "x=\"tab\\there \\u00e9 \\x41 \\101 \\\\ end\"\n",
        );
        let m = parse(text).unwrap();
        assert_eq!(m["rotor.dev/inject"], "true");
        assert_eq!(
            m["rotor.dev/template.cfg"],
            "user: app\npass: {{ secrets[\"db\"] }}\n"
        );
        assert_eq!(m["x"], "tab\there é A A \\ end");
    }

    #[test]
    fn round_trips_through_format() {
        let mut m = BTreeMap::new();
        m.insert("a".to_owned(), "multi\nline \"quoted\" \\ ü".to_owned());
        m.insert("b".to_owned(), String::new());
        assert_eq!(parse(&format(&m)).unwrap(), m);
    }

    #[test]
    fn malformed_lines_name_the_line() {
        assert!(
            parse("a=\"ok\"\nbroken\n")
                .unwrap_err()
                .starts_with("line 2")
        );
        assert!(
            parse("a=unquoted\n")
                .unwrap_err()
                .contains("not in double quotes")
        );
        assert!(
            parse("a=\"bad \\q\"\n")
                .unwrap_err()
                .contains("unknown escape")
        );
        assert!(
            parse("a=\"cut \\u12\"\n")
                .unwrap_err()
                .contains("cut short")
        );
    }
}
