//! Turns fetched secret values into the files a pod asked for.

use std::collections::BTreeMap;

use rotor_contract::annotations::{FileSource, PodSecrets};
use rotor_envelope::ExposeSecret;
use zeroize::Zeroizing;

use crate::writer::FileSpec;
use crate::{Error, Result};

/// Renders every file of `contract` from `values` (secret name → value),
/// with `default_mode` unless the pod sets `rotor.dev/file-mode`.
/// Errors name the file and the problem, never a value.
pub fn render(
    contract: &PodSecrets,
    values: &BTreeMap<String, rotor_envelope::Plaintext>,
    default_mode: u32,
) -> Result<Vec<FileSpec>> {
    let mut plain: BTreeMap<&str, Zeroizing<Vec<u8>>> = BTreeMap::new();
    for (file, source) in &contract.files {
        if let FileSource::Secret { name, key } = source {
            let value = values.get(name).ok_or_else(|| Error::Render {
                file: file.clone(),
                problem: format!("secret {name:?} has not been fetched"),
            })?;
            let data = match key {
                None => Zeroizing::new(value.expose_secret().to_vec()),
                Some(key) => {
                    select_field(value.expose_secret(), key).map_err(|problem| Error::Render {
                        file: file.clone(),
                        problem: format!("secret {name:?}: {problem}"),
                    })?
                }
            };
            plain.insert(file, data);
        }
    }
    let mut out = Vec::with_capacity(contract.files.len());
    for (file, source) in &contract.files {
        let data = match source {
            FileSource::Secret { .. } => plain[file.as_str()].clone(),
            FileSource::Template { source } => render_template(file, source, &plain)?,
        };
        out.push(FileSpec {
            name: file.clone(),
            data,
            mode: contract.file_mode.unwrap_or(default_mode),
        });
    }
    Ok(out)
}

/// One field of a JSON object: a string as its text, anything else as JSON.
/// The field `value` of a secret whose only field is `value`: stores
/// return such a secret unwrapped (as Vault/OpenBao KV v2 `{"value": …}`
/// and one-key Kubernetes Secrets do), and Vault Agent users write
/// `#value` for it.
const UNWRAPPED_FIELD: &str = "value";

fn select_field(value: &[u8], key: &str) -> std::result::Result<Zeroizing<Vec<u8>>, String> {
    let parsed: serde_json::Value = match serde_json::from_slice(value) {
        Ok(v @ serde_json::Value::Object(_)) => v,
        _ if key == UNWRAPPED_FIELD => return Ok(Zeroizing::new(value.to_vec())),
        Ok(_) => {
            return Err(format!(
                "is JSON but not an object, so #{key} cannot select a field"
            ));
        }
        Err(_) => {
            return Err(format!(
                "is not a JSON object, so #{key} cannot select a field"
            ));
        }
    };
    let object = parsed
        .as_object()
        .ok_or_else(|| format!("is JSON but not an object, so #{key} cannot select a field"))?;
    // Field names can be secret too: say only which one is missing.
    let field = object
        .get(key)
        .ok_or_else(|| format!("has no field {key:?}"))?;
    Ok(Zeroizing::new(match field {
        serde_json::Value::String(s) => s.as_bytes().to_vec(),
        other => other.to_string().into_bytes(),
    }))
}

/// The most bytes one template renders: a Kubernetes Secret's own limit
/// (1 MiB). A template that writes more (a loop) is refused when it
/// reaches it, so the sidecar never holds more than this per file.
pub const MAX_RENDERED_BYTES: usize = 1024 * 1024;

/// The rendered output, refusing to grow past [`MAX_RENDERED_BYTES`].
struct Capped {
    out: Zeroizing<Vec<u8>>,
    over: bool,
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len() + buf.len() > MAX_RENDERED_BYTES {
            self.over = true;
            return Err(std::io::Error::other("the rendered file is too large"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn render_template(
    file: &str,
    source: &str,
    plain: &BTreeMap<&str, Zeroizing<Vec<u8>>>,
) -> Result<Zeroizing<Vec<u8>>> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    // Only the error's kind and line go into messages: a template error's
    // full text could quote a rendered value.
    let fail = |e: minijinja::Error| Error::Render {
        file: file.to_owned(),
        problem: format!(
            "template failed{}: {}{}",
            e.line()
                .map(|l| format!(" at line {l}"))
                .unwrap_or_default(),
            e.kind(),
            // These details name what the template's own text asked for
            // (a filter, a test, a function), never a value.
            match e.kind() {
                minijinja::ErrorKind::UnknownFilter
                | minijinja::ErrorKind::UnknownTest
                | minijinja::ErrorKind::UnknownFunction =>
                    e.detail().map(|d| format!(" ({d})")).unwrap_or_default(),
                _ => String::new(),
            }
        ),
    };
    let secrets: BTreeMap<&str, String> = plain
        .iter()
        .map(|(k, v)| (*k, String::from_utf8_lossy(v).into_owned()))
        .collect();
    let mut out = Capped {
        out: Zeroizing::new(Vec::new()),
        over: false,
    };
    let rendered = env.template_from_str(source).and_then(|t| {
        t.render_captured_to(minijinja::context! { secrets => &secrets }, &mut out)
            .map(drop)
    });
    // `secrets` held copies of the values: make sure they are wiped.
    zeroize_map(secrets);
    if out.over {
        return Err(Error::Render {
            file: file.to_owned(),
            problem: format!(
                "the template renders more than {MAX_RENDERED_BYTES} bytes (1 MiB), the cap on \
                 a rendered file; refusing it (a loop?)"
            ),
        });
    }
    rendered.map_err(fail)?;
    Ok(out.out)
}

fn zeroize_map(map: BTreeMap<&str, String>) {
    for (_, mut v) in map {
        zeroize::Zeroize::zeroize(&mut v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rotor_contract::annotations::{DEFAULT_FILE_MODE, parse};

    const CANARY: &str = "canary-3e9b-render";

    fn contract(pairs: &[(&str, &str)]) -> PodSecrets {
        parse(pairs.iter().copied()).unwrap()
    }

    fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, rotor_envelope::Plaintext> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec().into()))
            .collect()
    }

    fn text(files: &[FileSpec], name: &str) -> String {
        let f = files.iter().find(|f| f.name == name).unwrap();
        String::from_utf8(f.data.to_vec()).unwrap()
    }

    #[test]
    fn raw_values_json_fields_and_templates() {
        let c = contract(&[
            ("rotor.dev/secret.raw", "db"),
            ("rotor.dev/secret.user", "creds#user"),
            ("rotor.dev/secret.port", "creds#port"),
            (
                "rotor.dev/template.url",
                "pg://{{ secrets.user }}:{{ secrets['raw'] }}@h:{{ secrets.port }}",
            ),
            ("rotor.dev/file-mode", "0440"),
        ]);
        let v = values(&[("db", "pw"), ("creds", r#"{"user":"app","port":5432}"#)]);
        let files = render(&c, &v, DEFAULT_FILE_MODE).unwrap();
        assert_eq!(text(&files, "raw"), "pw");
        assert_eq!(text(&files, "user"), "app");
        assert_eq!(text(&files, "port"), "5432");
        assert_eq!(text(&files, "url"), "pg://app:pw@h:5432");
        assert!(files.iter().all(|f| f.mode == 0o440));
    }

    /// A KV v2 secret whose only field is `value` reads unwrapped; Vault
    /// Agent users select it with `#value`, which must keep working.
    #[test]
    fn hash_value_selects_an_unwrapped_value() {
        let c = contract(&[
            ("rotor.dev/secret.a", "plain#value"),
            ("rotor.dev/secret.b", "object#value"),
        ]);
        let v = values(&[
            ("plain", "s3cret"),
            ("object", r#"{"value":"x","other":"y"}"#),
        ]);
        let files = render(&c, &v, DEFAULT_FILE_MODE).unwrap();
        assert_eq!(text(&files, "a"), "s3cret");
        assert_eq!(text(&files, "b"), "x");
        // Any other field of a non-object still fails.
        let c = contract(&[("rotor.dev/secret.a", "plain#user")]);
        assert!(render(&c, &v, DEFAULT_FILE_MODE).is_err());
    }

    /// A connection string from a generated password: every symbol the
    /// password generator can produce survives `urlencode`.
    #[test]
    fn urlencode_builds_connection_strings_from_any_generated_password() {
        // The generator's default symbol set (SecretRotationPolicy
        // generator.password.symbols), with letters and digits.
        let password = "aZ9!#%+-.:=@^_~";
        let c = contract(&[
            ("rotor.dev/secret.db", "db"),
            (
                "rotor.dev/template.url",
                "postgres://app:{{ secrets['db'] | urlencode }}@db:5432/app",
            ),
        ]);
        let files = render(&c, &values(&[("db", password)]), DEFAULT_FILE_MODE).unwrap();
        let url = text(&files, "url");
        let encoded = url
            .strip_prefix("postgres://app:")
            .and_then(|r| r.strip_suffix("@db:5432/app"))
            .unwrap();
        assert!(
            !encoded.contains(['@', ':', '/', '?', '#'].as_ref()),
            "{encoded}"
        );
        // Percent-decoding gives the password back.
        let mut decoded = Vec::new();
        let bytes = encoded.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                decoded.push(u8::from_str_radix(&encoded[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
        assert_eq!(String::from_utf8(decoded).unwrap(), password);
    }

    #[test]
    fn an_unknown_filter_is_named() {
        let c = contract(&[
            ("rotor.dev/secret.db", "db"),
            (
                "rotor.dev/template.url",
                "x={{ secrets['db'] | nosuchfilter }}",
            ),
        ]);
        let Err(err) = render(&c, &values(&[("db", CANARY)]), DEFAULT_FILE_MODE) else {
            panic!("an unknown filter rendered");
        };
        let err = err.to_string();
        assert!(err.contains("nosuchfilter"), "{err}");
        assert!(!err.contains(CANARY), "{err}");
    }

    /// Field names can be sensitive (a user name as a key, a host per
    /// field): only the missing key, the file and the secret are named.
    const CANARY_FIELD: &str = "canary-field-71c4";

    #[test]
    fn field_errors_name_the_file_and_never_the_value() {
        let c = contract(&[("rotor.dev/secret.f", "s#missing")]);
        for (value, expected) in [
            (CANARY.to_owned(), "is not a JSON object"),
            (format!("[\"{CANARY}\"]"), "is JSON but not an object"),
            (
                format!("{{\"{CANARY_FIELD}\":\"{CANARY}\",\"{CANARY_FIELD}-2\":1}}"),
                "has no field \"missing\"",
            ),
        ] {
            let err = render(&c, &values(&[("s", &value)]), DEFAULT_FILE_MODE)
                .err()
                .unwrap()
                .to_string();
            assert!(
                err.starts_with("file \"f\": secret \"s\": ") && err.contains(expected),
                "{err}"
            );
            assert!(!err.contains(CANARY), "{err}");
            assert!(!err.contains(CANARY_FIELD), "{err}");
        }
    }

    #[test]
    fn a_missing_field_names_only_the_key_the_file_and_the_secret() {
        let c = contract(&[("rotor.dev/secret.db-user", "app/creds#user")]);
        let value = format!(
            "{{\"{CANARY_FIELD}\":\"{CANARY}\",\"password\":\"{CANARY}\",\"{CANARY_FIELD}-nested\":{{\"a\":1}}}}"
        );
        let err = render(&c, &values(&[("app/creds", &value)]), DEFAULT_FILE_MODE)
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            err,
            "file \"db-user\": secret \"app/creds\": has no field \"user\""
        );
    }

    /// A template loop that would write 100 MiB stops at the cap, with an
    /// error naming the file and the cap; a template just under it renders.
    #[test]
    fn a_template_over_the_cap_is_refused_naming_the_file_and_the_cap() {
        let c = contract(&[
            ("rotor.dev/secret.db", "db"),
            (
                "rotor.dev/template.big",
                "{% for i in range(10000) %}{% for j in range(10000) %}{{ secrets.db }}{% endfor %}{% endfor %}",
            ),
        ]);
        let err = render(&c, &values(&[("db", CANARY)]), DEFAULT_FILE_MODE)
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            err,
            "file \"big\": the template renders more than 1048576 bytes (1 MiB), the cap on a \
             rendered file; refusing it (a loop?)"
        );
        let c = contract(&[
            ("rotor.dev/secret.db", "db"),
            (
                "rotor.dev/template.fits",
                "{% for i in range(1024) %}{{ secrets.db }}{% endfor %}",
            ),
        ]);
        let kib = "k".repeat(1024);
        let files = render(&c, &values(&[("db", &kib)]), DEFAULT_FILE_MODE).unwrap();
        let fits = files.iter().find(|f| f.name == "fits").unwrap();
        assert_eq!(fits.data.len(), MAX_RENDERED_BYTES);
    }

    #[test]
    fn template_errors_never_quote_a_value() {
        let c = contract(&[
            ("rotor.dev/secret.a", "s"),
            (
                "rotor.dev/template.t",
                "{{ secrets.a | int + undefined_var }}",
            ),
        ]);
        let err = render(&c, &values(&[("s", CANARY)]), DEFAULT_FILE_MODE)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("file \"t\": template failed"), "{err}");
        assert!(!err.contains(CANARY), "{err}");
    }
}
