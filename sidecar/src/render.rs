//! Turns fetched secret values into the files a pod asked for.

use std::collections::BTreeMap;

use rotor_crds::annotations::{FileSource, PodSecrets};
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
fn select_field(value: &[u8], key: &str) -> std::result::Result<Zeroizing<Vec<u8>>, String> {
    let parsed: serde_json::Value = serde_json::from_slice(value)
        .map_err(|_| format!("is not a JSON object, so #{key} cannot select a field"))?;
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
            "template failed{}: {}",
            e.line()
                .map(|l| format!(" at line {l}"))
                .unwrap_or_default(),
            e.kind()
        ),
    };
    let secrets: BTreeMap<&str, String> = plain
        .iter()
        .map(|(k, v)| (*k, String::from_utf8_lossy(v).into_owned()))
        .collect();
    let rendered = env
        .render_str(source, minijinja::context! { secrets => secrets })
        .map_err(fail)?;
    // `secrets` held copies of the values: make sure they are wiped.
    zeroize_map(secrets);
    Ok(Zeroizing::new(rendered.into_bytes()))
}

fn zeroize_map(map: BTreeMap<&str, String>) {
    for (_, mut v) in map {
        zeroize::Zeroize::zeroize(&mut v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rotor_crds::annotations::{DEFAULT_FILE_MODE, parse};

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
