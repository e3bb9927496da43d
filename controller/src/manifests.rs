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
        serde_yaml::from_value(value).map_err(|e| Error::Config(format!("{source} ({kind}): {e}")))
    }

    /// The error for a kind the caller does not take.
    pub fn unexpected(&self, expected: &str) -> Error {
        Error::Config(format!(
            "{}: kind {:?} is not one of {expected}",
            self.source, self.kind
        ))
    }
}

/// Every non-empty document of the `.yaml` and `.yml` files in `dir`, in
/// file-name order. `flag` names the option the directory came from.
pub fn documents(dir: &Path, flag: &str) -> Result<Vec<Document>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::Config(format!("{flag} {}: cannot list ({e})", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::Config(format!("{}: cannot read ({e})", path.display())))?;
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let source = format!("{} document {}", path.display(), i + 1);
            let value = serde_yaml::Value::deserialize(doc)
                .map_err(|e| Error::Config(format!("{source}: {e}")))?;
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
