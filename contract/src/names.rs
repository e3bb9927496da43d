//! Naming rules shared by every part of Rotor: secret names (the same for
//! every store, so a name that works locally works in Vault and AWS too)
//! and the file names a pod asks for; and the name the controller writes
//! under.

/// The controller's server-side-apply field manager, for every status it
/// writes.
pub const FIELD_MANAGER: &str = "rotor-controller";

/// A name that breaks a naming rule. Names are never secret, so the error
/// quotes them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {name:?} {problem}; expected {expected}")]
pub struct InvalidName {
    pub what: &'static str,
    pub name: String,
    pub problem: String,
    pub expected: &'static str,
}

const SECRET_EXPECTED: &str = "1 to 255 characters from letters, digits, '.', '_', '-' and '/', \
with '/' only between non-empty segments other than '.' and '..'";

/// Checks a secret name.
pub fn validate_secret_name(name: &str) -> Result<(), InvalidName> {
    let fail = |problem: String| {
        Err(InvalidName {
            what: "secret name",
            name: name.chars().take(80).collect(),
            problem,
            expected: SECRET_EXPECTED,
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

/// The longest file name: `secret.<file>` must fit the 63-character limit
/// of a Kubernetes annotation name.
pub const MAX_FILE_NAME_LEN: usize = 63 - "secret.".len();

const FILE_EXPECTED: &str = "at most 56 characters from letters, digits, '-', '_' and '.', \
beginning and ending with a letter or digit";

/// Checks a file name from a `secret.<file>` or `template.<file>`
/// annotation: whatever makes `secret.<file>` a valid Kubernetes annotation
/// name. So it can never be `.`, `..`, hidden, or a path.
pub fn validate_file_name(name: &str) -> Result<(), InvalidName> {
    let fail = |problem: String| {
        Err(InvalidName {
            what: "file name",
            name: name.chars().take(80).collect(),
            problem,
            expected: FILE_EXPECTED,
        })
    };
    if name.is_empty() {
        return fail("is empty".to_owned());
    }
    if name.len() > MAX_FILE_NAME_LEN {
        return fail(format!("is {} characters long", name.len()));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return fail(format!("contains the character {c:?}"));
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !alnum(name.chars().next()) || !alnum(name.chars().last()) {
        return fail("does not begin and end with a letter or digit".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names() {
        for ok in ["db", "team-a/db.password", "A_1", "x/y/z"] {
            validate_secret_name(ok).unwrap();
        }
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

    #[test]
    fn file_names() {
        for ok in ["db", "tls.crt", "a", "db_password-2", &"x".repeat(56)] {
            validate_file_name(ok).unwrap();
        }
        for (bad, why) in [
            ("", "is empty"),
            (".", "does not begin and end"),
            ("..", "does not begin and end"),
            (".hidden", "does not begin and end"),
            ("trailing-", "does not begin and end"),
            ("a/b", "contains the character '/'"),
            ("../etc", "contains the character '/'"),
            ("sp ace", "contains the character ' '"),
            (&"x".repeat(57), "is 57 characters long"),
        ] {
            let err = validate_file_name(bad).unwrap_err().to_string();
            assert!(
                err.contains(why) && err.contains("expected"),
                "{bad:?}: {err}"
            );
        }
    }
}
