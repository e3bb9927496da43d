//! Kubernetes manifests read as YAML documents, each pod template's
//! annotations translated in place, and the documents written back. The
//! rest of every document is kept as it was, in its order; YAML comments
//! and anchors are lost (serde_yaml_ng does not keep them).

use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};

use super::vault_injector::{self, Finding, Options, Outcome};

/// What the translation of one input said, line by line.
#[derive(Debug, Default)]
pub struct Report {
    pub lines: Vec<String>,
    /// Vault annotations kept because they were not translated.
    pub kept: usize,
}

/// Where a kind keeps its pod template's metadata.
fn pod_metadata_path(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "Pod" => &["metadata"],
        "PodTemplate" => &["template", "metadata"],
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => &["spec", "template", "metadata"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template", "metadata"],
        _ => return None,
    })
}

/// Translates every document of `text` (named `source` in the report) and
/// returns them as YAML, separated by `---`.
pub fn migrate(
    text: &str,
    source: &str,
    options: &Options,
    report: &mut Report,
) -> Result<Vec<String>, serde_yaml_ng::Error> {
    let mut out = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let mut value = Value::deserialize(document)?;
        if value.is_null() {
            continue;
        }
        visit(
            &mut value,
            &format!("{source}#{}", index + 1),
            options,
            report,
        );
        out.push(serde_yaml_ng::to_string(&value)?);
    }
    Ok(out)
}

fn visit(value: &mut Value, at: &str, options: &Options, report: &mut Report) {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if kind == "List" {
        if let Some(items) = value.get_mut("items").and_then(Value::as_sequence_mut) {
            for (i, item) in items.iter_mut().enumerate() {
                visit(item, &format!("{at} items[{i}]"), options, report);
            }
        }
        return;
    }
    let Some(path) = pod_metadata_path(&kind) else {
        return;
    };
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("(no name)");
    let at = format!("{at} {kind}/{name}");
    let mut target = Some(&mut *value);
    for key in path {
        target = target.and_then(|v| v.get_mut(*key));
    }
    let Some(annotations) = target
        .and_then(|m| m.get_mut("annotations"))
        .and_then(Value::as_mapping_mut)
    else {
        return;
    };
    translate(annotations, &at, options, report);
}

fn translate(annotations: &mut Mapping, at: &str, options: &Options, report: &mut Report) {
    let mut pairs = Vec::new();
    for (key, value) in annotations.iter() {
        let Some(key) = key.as_str() else { continue };
        match value.as_str() {
            Some(v) => pairs.push((key.to_owned(), v.to_owned())),
            None if key.starts_with(rotor_contract::vault_injector::PREFIX) => {
                report.kept += 1;
                report.lines.push(format!(
                    "{at}: not translated: {key}: the value is not a string (Kubernetes takes only strings: quote it)"
                ));
            }
            None => {}
        }
    }
    let translation = vault_injector::translate(&pairs, options);
    report.kept += translation.kept_count();
    for finding in &translation.findings {
        report.lines.push(match finding {
            Finding::Annotation {
                annotation,
                outcome: Outcome::Kept,
                reason,
            } => format!("{at}: not translated: {annotation}: {reason}"),
            Finding::Annotation {
                annotation,
                outcome: Outcome::Removed,
                reason,
            } => format!("{at}: removed: {annotation}: {reason}"),
            Finding::Note(text) => format!("{at}: note: {text}"),
        });
    }
    if translation.add.is_empty() {
        return;
    }
    annotations.retain(|k, _| !k.as_str().is_some_and(|k| translation.remove.contains(k)));
    for (key, value) in translation.add {
        annotations.insert(Value::String(key), Value::String(value));
    }
}
