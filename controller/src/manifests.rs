//! Kubernetes objects read from a directory of YAML files, for the modes
//! that run without an API server (`webhook --stores`, `standalone`).

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize as _;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_yaml_ng::{Location, Value};

use crate::{Error, Result};

/// One YAML document: where it came from, its `kind`, and its value.
pub struct Document {
    /// `path document N`, for error messages.
    pub source: String,
    pub kind: String,
    pub value: Value,
    /// The whole file, parsed again for typed values and field locations
    /// (a [`Value`] has no line numbers).
    text: Arc<str>,
    /// This document's index among the file's documents.
    index: usize,
}

impl Document {
    /// The document parsed from its text, so that errors carry the field
    /// path, line and column.
    fn deserializer(&self) -> Option<serde_yaml_ng::Deserializer<'_>> {
        serde_yaml_ng::Deserializer::from_str(&self.text).nth(self.index)
    }

    /// Deserializes the document, naming it, the field and its line in the
    /// error.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        let parsed = match self.deserializer() {
            Some(de) => T::deserialize(de),
            None => serde_yaml_ng::from_value(self.value.clone()),
        };
        parsed.map_err(|e| Error::Manifest {
            document: format!("{} ({})", self.source, self.kind),
            problem: e.to_string(),
        })
    }

    /// Like [`Document::parse`], but a field the type does not know (a typo
    /// such as `intervall:`) is an error naming its path and line, not
    /// ignored.
    pub fn parse_strict<T: serde::de::DeserializeOwned + serde::Serialize>(&self) -> Result<T> {
        let (source, kind) = (&self.source, &self.kind);
        let document = format!("{source} ({kind})");
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
            return Ok(parsed);
        }
        let located: Vec<String> = unknown
            .iter()
            .map(|p| format!("{p}{}", self.at(p)))
            .collect();
        Err(Error::Manifest {
            document,
            problem: format!(
                "unknown field{} {}; check the spelling against the {kind} reference",
                if unknown.len() == 1 { "" } else { "s" },
                located.join(", ")
            ),
        })
    }

    /// `problem`, which starts with the field path it is about (as
    /// [`crate::rotation::validate::Policy::check`] writes them), with this
    /// document and the line of that field (or of its nearest parent
    /// present in the file).
    pub fn problem(&self, problem: &str) -> String {
        let path = problem.split([' ', ':']).next().unwrap_or_default();
        format!("{}: {problem}{}", self.source, self.at(path))
    }

    /// ` (line L, column C)` of the field at `path` or its nearest parent
    /// in the document, or nothing.
    fn at(&self, path: &str) -> String {
        let mut path = path;
        while !path.is_empty() {
            if let Some(l) = self.locate(path) {
                return format!(" (line {}, column {})", l.line(), l.column());
            }
            path = &path[..path.rfind(['.', '[']).unwrap_or(0)];
        }
        String::new()
    }

    /// Where the key at `path` (`spec.schedule.cron`, `spec.sidecars[0].url`)
    /// is: the document is walked again and stopped with an error at that
    /// key, which the YAML parser marks with its position.
    fn locate(&self, path: &str) -> Option<Location> {
        let segments: Vec<Segment> = path
            .split('.')
            .flat_map(|part| {
                let mut pieces = part.split('[');
                let key = pieces.next().map(Segment::Key);
                let indices = pieces.map(|i| {
                    i.trim_end_matches(']')
                        .parse()
                        .map_or(Segment::Key(i), Segment::Index)
                });
                key.into_iter().chain(indices)
            })
            .collect();
        match Find(&segments).deserialize(self.deserializer()?) {
            Err(e) if e.to_string().contains(FOUND) => e.location(),
            _ => None,
        }
    }

    /// The error for a kind the caller does not take; for a Rotor kind
    /// that was renamed, the error names the new kind.
    pub fn unexpected(&self, expected: &str) -> Error {
        let rotor = self.value["apiVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("rotor.dev/"));
        let renamed = rotor_contract::api::RENAMED_KINDS
            .iter()
            .find(|(old, _)| rotor && *old == self.kind);
        let problem = match renamed {
            Some((old, new)) => format!(
                "kind {old} was renamed {new} in rotor.dev/v1alpha1 ({old} is also External Secrets Operator's kind); write kind: {new}"
            ),
            None => format!("kind {:?} is not one of {expected}", self.kind),
        };
        Error::Manifest {
            document: self.source.clone(),
            problem,
        }
    }
}

/// One step of a field path.
enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

/// The error [`Find`] stops at the wanted key with.
const FOUND: &str = "rotor: the field is here";

/// Walks a document down `.0`; fails with [`FOUND`] at the last key.
struct Find<'a>(&'a [Segment<'a>]);

impl<'de> DeserializeSeed<'de> for Find<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Find<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let (want, rest) = match self.0.split_first() {
            Some((Segment::Key(want), rest)) => (Some(*want), rest),
            _ => (None, &[][..]),
        };
        while let Some(found) = map.next_key_seed(Key {
            want,
            last: rest.is_empty(),
        })? {
            if found {
                map.next_value_seed(Find(rest))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let (want, rest) = match self.0.split_first() {
            Some((Segment::Index(want), rest)) => (Some(*want), rest),
            _ => (None, &[][..]),
        };
        let mut i = 0;
        loop {
            let more = if want == Some(i) {
                seq.next_element_seed(Find(rest))?.is_some()
            } else {
                seq.next_element::<IgnoredAny>()?.is_some()
            };
            if !more {
                return Ok(());
            }
            i += 1;
        }
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

/// A mapping key: whether it is the one wanted, or [`FOUND`] if it is and
/// the path ends there.
struct Key<'a> {
    want: Option<&'a str>,
    last: bool,
}

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = bool;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a mapping key")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<bool, E> {
        match self.want {
            Some(w) if w == key && self.last => Err(E::custom(FOUND)),
            Some(w) => Ok(w == key),
            None => Ok(false),
        }
    }

    fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(false)
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
                    // An empty list or map: a field serialized only when
                    // set (`sidecars: []`) reads back absent; empty, an
                    // unknown field would change nothing either.
                    None if v.is_null()
                        || v.as_array().is_some_and(Vec::is_empty)
                        || v.as_object().is_some_and(serde_json::Map::is_empty) => {}
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
        let text: Arc<str> = text.into();
        for (index, doc) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
            let source = format!("{} document {}", path.display(), index + 1);
            let value = Value::deserialize(doc).map_err(|e| Error::Manifest {
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
                text: text.clone(),
                index,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use rotor_contract::api::SecretRotationPolicy;

    use super::*;

    const TWO: &str = "kind: Namespace\nmetadata: {name: a}\n---\n# a policy\nkind: SecretRotationPolicy\nmetadata: {name: db}\nspec:\n  storeRef: {name: main}\n  secretName: app/db\n  schedule:\n    cron: '*/0 * * * *'\n    intervall: 1h\n  generator: {password: {length: 32}}\n";

    fn second() -> Document {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.yaml"), TWO).unwrap();
        let mut docs = documents(dir.path(), "--policies").unwrap();
        assert_eq!(docs.len(), 2);
        docs.pop().unwrap()
    }

    /// Lines count from the top of the file, not of the document.
    #[test]
    fn problems_carry_the_line_of_their_field() {
        let doc = second();
        let p = doc.problem("spec.schedule.cron \"*/0 * * * *\": bad");
        assert!(
            p.ends_with(
                "p.yaml document 2: spec.schedule.cron \"*/0 * * * *\": bad (line 11, column 5)"
            ),
            "{p}"
        );
        // A field absent from the file: its nearest parent.
        let p = doc.problem("spec.schedule.window.start: bad");
        assert!(p.ends_with("(line 10, column 3)"), "{p}");
        let p = doc.problem("spec.generator.password.length 4: bad");
        assert!(p.ends_with("(line 13, column 26)"), "{p}");
    }

    #[test]
    fn unknown_and_mistyped_fields_carry_their_line() {
        let err = second()
            .parse_strict::<SecretRotationPolicy>()
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("document 2 (SecretRotationPolicy): unknown field spec.schedule.intervall (line 12, column 5); check the spelling"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("p.yaml"),
            TWO.replace("length: 32", "length: long"),
        )
        .unwrap();
        let doc = documents(dir.path(), "--policies").unwrap().pop().unwrap();
        let err = doc
            .parse::<SecretRotationPolicy>()
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("spec.generator.password.length: invalid type: string \"long\"")
                && err.contains("line 13 column 34"),
            "{err}"
        );
    }
}
