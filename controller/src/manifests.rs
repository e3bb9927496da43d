//! Kubernetes objects read from a directory of YAML files, for the modes
//! that run without an API server (`webhook --stores`, `standalone`).

use std::path::Path;

use serde::Deserialize as _;

use crate::{Error, Result};

/// One YAML document: where it came from, its `kind`, and its value.
pub struct Document {
    /// `path document N`, for error messages.
    pub source: String,
    pub kind: String,
    pub value: serde_yaml::Value,
}

impl Document {
    /// Deserializes the document, naming it in the error.
    pub fn parse<T: serde::de::DeserializeOwned>(self) -> Result<T> {
        let Self {
            source,
            kind,
            value,
        } = self;
        serde_yaml::from_value(value).map_err(|e| Error::Manifest {
            document: format!("{source} ({kind})"),
            problem: e.to_string(),
        })
    }

    /// Like [`Document::parse`], but a field the type does not know (a typo
    /// such as `intervall:`) is an error naming its path, not ignored.
    pub fn parse_strict<T: serde::de::DeserializeOwned + serde::Serialize>(self) -> Result<T> {
        let document = format!("{} ({})", self.source, self.kind);
        let kind = self.kind.clone();
        let invalid = |e: serde_json::Error| Error::Manifest {
            document: document.clone(),
            problem: e.to_string(),
        };
        let input = serde_json::to_value(&self.value).map_err(invalid)?;
        let parsed: T = self.parse()?;
        let output = serde_json::to_value(&parsed).map_err(invalid)?;
        let mut unknown = Vec::new();
        unknown_fields(&input, &output, "", &mut unknown);
        // Kubernetes fills these in; a file may carry them from `kubectl get`.
        unknown.retain(|p| !p.starts_with("status") && !p.starts_with("metadata."));
        if unknown.is_empty() {
            Ok(parsed)
        } else {
            Err(Error::Manifest {
                document,
                problem: format!(
                    "unknown field{} {}; check the spelling against the {kind} reference",
                    if unknown.len() == 1 { "" } else { "s" },
                    unknown.join(", ")
                ),
            })
        }
    }

    /// The error for a kind the caller does not take.
    pub fn unexpected(&self, expected: &str) -> Error {
        Error::Manifest {
            document: self.source.clone(),
            problem: format!("kind {:?} is not one of {expected}", self.kind),
        }
    }
}

/// The paths of keys in `input` that `output` (the input parsed and
/// written back) lost: fields the type does not have.
fn unknown_fields(
    input: &serde_json::Value,
    output: &serde_json::Value,
    path: &str,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            for (k, v) in i {
                let here = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match o.get(k) {
                    Some(w) => unknown_fields(v, w, &here, out),
                    None if v.is_null() => {}
                    None => out.push(here),
                }
            }
        }
        (Value::Array(i), Value::Array(o)) => {
            for (n, (v, w)) in i.iter().zip(o).enumerate() {
                unknown_fields(v, w, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

/// Every non-empty document of the `.yaml` and `.yml` files in `dir`, in
/// file-name order. `flag` names the option the directory came from.
pub fn documents(dir: &Path, flag: &str) -> Result<Vec<Document>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::Manifest {
            document: format!("{flag} {}", dir.display()),
            problem: format!("cannot list ({e})"),
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|e| Error::Manifest {
            document: path.display().to_string(),
            problem: format!("cannot read ({e})"),
        })?;
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let source = format!("{} document {}", path.display(), i + 1);
            let value = serde_yaml::Value::deserialize(doc).map_err(|e| Error::Manifest {
                document: source.clone(),
                problem: e.to_string(),
            })?;
            if value.is_null() {
                continue;
            }
            let kind = value
                .get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or_default()
                .to_owned();
            out.push(Document {
                source,
                kind,
                value,
            });
        }
    }
    Ok(out)
}
