//! One AdmissionReview answered: read and bounded, validated, injected or
//! refused, each denial with its reason.

use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;

use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use rotor_contract::{annotations, vault_injector};

use super::inject::{InjectConfig, Injected, inject};
use super::limits::{MAX_ANSWER_BYTES, Shape, Unreadable, count_values};
use super::metrics::{self, Denial, Outcome};
use super::update;
use crate::store_index::StoreIndex;

/// Answers one AdmissionReview body. Returns the HTTP status and the body:
/// 400 with a message when the body is not JSON at all, otherwise 200 with
/// an AdmissionReview (which may say `allowed: false`).
pub fn handle(body: &[u8], stores: &StoreIndex, config: &InjectConfig) -> (u16, serde_json::Value) {
    let a = answer(body, stores, config);
    (
        a.status,
        serde_json::from_str(&a.body).unwrap_or(serde_json::Value::Null),
    )
}

/// One review's answer: the HTTP status, the body, and how it is counted.
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub operation: metrics::Operation,
    pub outcome: Outcome,
}

/// Answers one AdmissionReview body within the bounds of `limits`: the
/// pod's lists and the review's values are counted on the raw JSON before
/// the typed Pod is built, and an answer over [`MAX_ANSWER_BYTES`] is
/// replaced by a refusal.
pub fn answer(body: &[u8], stores: &StoreIndex, config: &InjectConfig) -> Answer {
    let shape = Shape::read(body).ok();
    let operation = metrics::Operation::of(shape.as_ref().and_then(Shape::operation));
    let early = |response: AdmissionResponse| {
        let mut response = response;
        if let Some(shape) = &shape {
            response.uid = shape.uid().to_owned();
            if let Some(v) = &shape.api_version {
                response.types.api_version = v.clone();
            }
        }
        finish(response, operation)
    };
    // Over a limit: refused, unless Rotor has nothing to do with the pod
    // (no rotor.dev/ annotation, before or after), which is let through
    // unread.
    let over = match shape.as_ref().and_then(Shape::exceeded) {
        Some(e) => Some(e),
        None => match count_values(body) {
            Ok(_) => None,
            Err(Unreadable::TooMany(e)) => Some(e),
            Err(Unreadable::NotJson(e)) => {
                return Answer {
                    status: 400,
                    body: serde_json::json!({ "error": format!("the body is not JSON: {e}") })
                        .to_string(),
                    operation,
                    outcome: Outcome::Error,
                };
            }
        },
    };
    if let Some(e) = over {
        if shape.as_ref().is_some_and(|s| !s.rotor()) {
            tracing::info!(limit = ?e.limit, count = e.count, "allowed unread: over a limit, no rotor.dev/ annotation");
            return early(allowed_unread());
        }
        tracing::info!(limit = ?e.limit, count = e.count, max = e.limit.max(), "denied: over a limit");
        return early(deny(
            AdmissionResponse::invalid(""),
            Denial::TooLarge,
            e.to_string(),
        ));
    }
    let review: AdmissionReview<Pod> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "malformed AdmissionReview");
            return early(AdmissionResponse::invalid(format!(
                "malformed AdmissionReview: {}",
                clip(&e.to_string(), MAX_DENY_MESSAGE)
            )));
        }
    };
    let request: AdmissionRequest<Pod> = match review.try_into() {
        Ok(r) => r,
        Err(e) => {
            return early(AdmissionResponse::invalid(format!(
                "the AdmissionReview has no request: {e}"
            )));
        }
    };
    finish(mutate(&request, stores, config), operation)
}

/// The answer for `response`, refused instead when it would be larger
/// than [`MAX_ANSWER_BYTES`].
fn finish(response: AdmissionResponse, operation: metrics::Operation) -> Answer {
    let outcome = outcome_of(&response);
    let body = to_json(response.clone().into_review()).to_string();
    if body.len() <= MAX_ANSWER_BYTES {
        return Answer {
            status: 200,
            body,
            operation,
            outcome,
        };
    }
    tracing::info!(
        bytes = body.len(),
        max = MAX_ANSWER_BYTES,
        "denied: answer too large"
    );
    let mut refused = AdmissionResponse::invalid("");
    refused.uid = response.uid;
    refused.types = response.types;
    let refused = deny(
        refused,
        Denial::AnswerTooLarge,
        format!(
            "the answer to this pod would be {} bytes, more than the {MAX_ANSWER_BYTES} Rotor's webhook sends; the pod is too large for Rotor to inject",
            body.len()
        ),
    );
    Answer {
        status: 200,
        outcome: outcome_of(&refused),
        body: to_json(refused.into_review()).to_string(),
        operation,
    }
}

/// How `response` is counted: a denial carries its reason in the audit
/// annotation `deny` wrote; `invalid` responses carry none.
fn outcome_of(response: &AdmissionResponse) -> Outcome {
    if response.allowed {
        return if response.patch.is_some() {
            Outcome::Patched
        } else {
            Outcome::Allowed
        };
    }
    let reason = response.audit_annotations.get(DENIAL_ANNOTATION);
    let inject_reason = response
        .audit_annotations
        .get(INJECT_DENIAL_ANNOTATION)
        .map(String::as_str);
    Denial::all()
        .find(|d| {
            reason.map(String::as_str) == Some(d.label())
                && d.inject_reason().map(|r| r.label()) == inject_reason
        })
        .map_or(Outcome::Invalid, Outcome::Denied)
}

/// The audit annotation with a denial's reason (the API server records it
/// in its audit log as `<webhook>/denial-reason`).
pub const DENIAL_ANNOTATION: &str = "denial-reason";

/// The audit annotation with a refused injection's [`InjectReason`].
///
/// [`InjectReason`]: super::inject::InjectReason
pub const INJECT_DENIAL_ANNOTATION: &str = "inject-denial-reason";

/// A plain allow for a review that was not read.
fn allowed_unread() -> AdmissionResponse {
    let mut response = AdmissionResponse::invalid("");
    response.allowed = true;
    response.result = Default::default();
    response
}

/// The review as JSON, with the patch as the base64 string the API server
/// documents (kube serializes the bytes as a number array, which the API
/// server also accepts, but no other webhook sends).
fn to_json(review: AdmissionReview<DynamicObject>) -> serde_json::Value {
    use base64::Engine as _;
    let mut value = serde_json::to_value(review)
        .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }));
    if let Some(patch) = value.pointer_mut("/response/patch")
        && let Some(bytes) = patch.as_array()
    {
        let raw: Vec<u8> = bytes
            .iter()
            .filter_map(|b| b.as_u64().map(|b| b as u8))
            .collect();
        *patch = serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(raw));
    }
    value
}

/// The warning for a pod that asks for Vault's agent and Rotor's sidecar.
pub const BOTH_INJECTORS: &str = "this pod asks for both Vault Agent Injector (vault.hashicorp.com/agent-inject) and Rotor (rotor.dev/inject): two agents will write its secrets; remove one (`rotor migrate vault-injector` translates Vault's annotations into Rotor's)";

/// The longest deny message returned (kubectl shows it to the user).
pub const MAX_DENY_MESSAGE: usize = 2048;

/// `text` cut at `max` bytes on a character boundary, marked when cut.
pub fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} more bytes)", &text[..end], text.len() - end)
}

/// `response` refused for `reason`, with `message` (clipped) for the user.
fn deny(
    mut response: AdmissionResponse,
    reason: Denial,
    message: impl AsRef<str>,
) -> AdmissionResponse {
    response
        .audit_annotations
        .insert(DENIAL_ANNOTATION.to_owned(), reason.label().to_owned());
    if let Some(r) = reason.inject_reason() {
        response
            .audit_annotations
            .insert(INJECT_DENIAL_ANNOTATION.to_owned(), r.label().to_owned());
    }
    response.deny(clip(message.as_ref(), MAX_DENY_MESSAGE))
}

/// The decision for one pod: CREATE is validated and injected; UPDATE
/// passes [`update::check`] (what can never change after creation), and
/// one that adds or changes `rotor.dev/` annotations is validated with the
/// same rules as CREATE (the sidecar applies annotation changes live).
pub fn mutate(
    request: &AdmissionRequest<Pod>,
    stores: &StoreIndex,
    config: &InjectConfig,
) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    let Some(pod) = &request.object else {
        return response; // DELETE or CONNECT: nothing to do
    };
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let name = clip(
        pod.metadata
            .name
            .as_deref()
            .or(pod.metadata.generate_name.as_deref())
            .unwrap_or_default(),
        253,
    );
    let namespace = request
        .namespace
        .clone()
        .or(pod.metadata.namespace.clone())
        .unwrap_or_default();
    let namespace = clip(&namespace, 63);
    let update = matches!(request.operation, Operation::Update);
    if update {
        match update::check(request.old_object.as_ref(), pod) {
            Ok(update::Allowed::Unchanged) => return response,
            Ok(update::Allowed::Changed) => {}
            Err(denied) => {
                tracing::info!(%namespace, pod = %name, reason = denied.reason(), error = %denied, "denied: update");
                let mut response = deny(response, Denial::AnnotationChanged, denied.to_string());
                response.result.reason = denied.reason().to_owned();
                return response;
            }
        }
    }
    if !annotations
        .keys()
        .any(|k| k.starts_with(annotations::PREFIX))
    {
        return response;
    }
    // Validate every rotor.dev/ annotation, whether or not the pod asks for
    // injection and whatever status it claims.
    let contract = match annotations::parse(
        annotations.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    ) {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(%namespace, pod = %name, problems = e.total(), error = %e, "denied: invalid annotations");
            return deny(response, Denial::InvalidAnnotations, e.to_string());
        }
    };
    if !contract.inject {
        return response;
    }
    let store_name = contract.store.as_deref().unwrap_or_default();
    let store = match stores.resolve(&namespace, store_name, &contract.secret_names()) {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(%namespace, pod = %name, error = %e, "denied: store not allowed");
            return deny(
                response,
                Denial::StoreNotAllowed,
                format!("annotation rotor.dev/store: {e}"),
            );
        }
    };
    if !store.allow_exec_reload
        && contract
            .reload
            .iter()
            .any(|a| matches!(a, annotations::ReloadAction::Exec { .. }))
    {
        tracing::info!(%namespace, pod = %name, store = %store.name, "denied: exec reload not allowed");
        return deny(
            response,
            Denial::ExecNotAllowed,
            format!(
                "annotation rotor.dev/reload: exec: actions are off for {} {:?}: an exec action runs with the sidecar's access to the store credentials and every secret file; its owner can allow them with spec.allowExecReload: true",
                store.kind, store.name
            ),
        );
    }
    if update {
        // A running pod's spec cannot change: validation is all there is.
        tracing::info!(%namespace, pod = %name, store = %store.name, "annotation change allowed");
        return response;
    }
    let mut pod = pod.clone();
    if pod.metadata.namespace.is_none() {
        pod.metadata.namespace = Some(namespace.clone());
    }
    let Injected {
        pod: injected,
        mut warnings,
    } = match inject(&pod, &contract, &store, config) {
        Ok(i) => i,
        Err(e) => {
            tracing::info!(%namespace, pod = %name, error = %e, reason = e.metric_label(), "denied: cannot inject");
            return deny(response, Denial::CannotInject(e.reason()), e.to_string());
        }
    };
    if vault_injector::asks_injection(annotations.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
        warnings.push(BOTH_INJECTORS.to_owned());
    }
    let before = serde_json::to_value(&pod).unwrap_or_default();
    let after = serde_json::to_value(&injected).unwrap_or_default();
    let mut patch = json_patch::diff(&before, &after);
    // The namespace was filled in only for building the patch.
    patch.0.retain(|op| op_path(op) != "/metadata/namespace");
    let mut response = response;
    if !warnings.is_empty() {
        response.warnings = Some(warnings);
    }
    if patch.0.is_empty() {
        return response;
    }
    tracing::info!(%namespace, pod = %name, store = %store.name, files = contract.files.len(), "injected");
    match response.clone().with_patch(patch) {
        Ok(r) => r,
        Err(e) => deny(
            response,
            Denial::Internal,
            format!("internal error building the patch: {e}"),
        ),
    }
}

fn op_path(op: &json_patch::PatchOperation) -> String {
    use json_patch::PatchOperation::*;
    match op {
        Add(o) => o.path.to_string(),
        Remove(o) => o.path.to_string(),
        Replace(o) => o.path.to_string(),
        Move(o) => o.path.to_string(),
        Copy(o) => o.path.to_string(),
        Test(o) => o.path.to_string(),
    }
}
