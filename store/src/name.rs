use crate::{Error, Result};

const EXPECTED: &str = "1 to 255 characters from letters, digits, '.', '_', '-' and '/', \
with '/' only between non-empty segments other than '.' and '..'";

/// Checks a secret name: the same rules for every store, so that a name that
/// works locally works in Vault and AWS too.
pub fn validate_secret_name(name: &str) -> Result<()> {
    let fail = |problem: String| {
        Err(Error::InvalidName {
            name: name.chars().take(80).collect(),
            problem,
            expected: EXPECTED,
        })
    };
    if name.is_empty() {
        return fail("is empty".to_owned());
    }
    if name.len() > 255 {
        return fail(format!("is {} bytes long", name.len()));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')))
    {
        return fail(format!("contains the character {c:?}"));
    }
    for segment in name.split('/') {
        match segment {
            "" => {
                return fail(
                    "has an empty path segment (leading, trailing or double '/')".to_owned(),
                );
            }
            "." | ".." => return fail(format!("has a {segment:?} path segment")),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_and_path_names() {
        for ok in ["db", "team-a/db.password", "A_1", "x/y/z"] {
            validate_secret_name(ok).unwrap();
        }
    }

    #[test]
    fn rejects_with_reason() {
        for (bad, why) in [
            ("", "is empty"),
            ("a b", "contains the character ' '"),
            ("/abs", "empty path segment"),
            ("a//b", "empty path segment"),
            ("a/../b", "\"..\" path segment"),
            ("ünï", "contains the character 'ü'"),
        ] {
            let err = validate_secret_name(bad).unwrap_err().to_string();
            assert!(
                err.contains(why) && err.contains("expected"),
                "{bad:?}: {err}"
            );
        }
        let long = "a".repeat(256);
        assert!(
            validate_secret_name(&long)
                .unwrap_err()
                .to_string()
                .contains("256 bytes")
        );
    }
}
