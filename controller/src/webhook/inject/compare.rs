//! Whether what a pod holds is what Rotor injects, by meaning: the fields
//! the API server defaults are ignored, and quantities and durations are
//! compared in the form the API server stores.

use k8s_openapi::api::core::v1::{Container, Volume};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// True when `existing` is `ours` as the API server stores it: every field
/// Rotor sets has the same value, and the only other fields are those the
/// API server fills in by default.
pub fn same_as_injected<T: serde::Serialize>(ours: &T, existing: &T) -> bool {
    match (serde_json::to_value(ours), serde_json::to_value(existing)) {
        (Ok(a), Ok(b)) => json_same_as_injected(&a, &b),
        _ => false,
    }
}

/// Fields the API server defaults on containers, probes, env and volumes.
const DEFAULTED: &[&str] = &[
    "terminationMessagePath",
    "terminationMessagePolicy",
    "successThreshold",
    "scheme",
    "apiVersion",
    "defaultMode",
    "protocol",
];

fn is_empty(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

fn json_same_as_injected(ours: &serde_json::Value, existing: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (ours, existing) {
        (Value::Object(a), Value::Object(b)) => {
            // The API server omits empty values (`readOnly: false`).
            a.iter().all(|(k, v)| match b.get(k) {
                Some(w) => json_same_as_injected(v, w),
                None => is_empty(v),
            }) && b
                .keys()
                .all(|k| a.contains_key(k) || DEFAULTED.contains(&k.as_str()))
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(v, w)| json_same_as_injected(v, w))
        }
        _ => ours == existing,
    }
}

// Rendering: every quantity and duration the webhook writes is in the
// form the API server stores, and what a pod holds is compared by meaning
// (see `quantity`), so a second pass over a stored pod changes nothing.

/// `text` as the API server stores it; text that is no quantity (the
/// flags refuse it) is written as given, for the API server to refuse.
pub(super) fn quantity(text: &str) -> Quantity {
    Quantity(super::super::quantity::canonical(text).unwrap_or_else(|_| text.to_owned()))
}

/// A refresh interval in Rotor's one form (`90s` is written `1m30s`).
pub(super) fn canonical_duration(text: &str) -> String {
    humantime::parse_duration(text)
        .map_or_else(|_| text.to_owned(), super::super::quantity::duration)
}

/// `c` with its resource quantities in canonical form, so that a stored
/// sidecar compares equal to the one Rotor would write by meaning.
pub(super) fn canonical_quantities(c: &Container) -> Container {
    let mut c = c.clone();
    if let Some(r) = c.resources.as_mut() {
        for list in [r.requests.as_mut(), r.limits.as_mut()]
            .into_iter()
            .flatten()
        {
            for q in list.values_mut() {
                *q = quantity(&q.0);
            }
        }
    }
    c
}

/// `v` with its emptyDir `sizeLimit` in canonical form.
pub(super) fn canonical_volume(v: &Volume) -> Volume {
    let mut v = v.clone();
    if let Some(limit) = v.empty_dir.as_mut().and_then(|e| e.size_limit.as_mut()) {
        *limit = quantity(&limit.0);
    }
    v
}
