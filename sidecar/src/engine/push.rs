//! Push handling: a `POST /v1/refresh` request checked (pins admitted
//! only for the store's PENDING version), applied, written, and answered
//! with the version served per secret.

use std::collections::BTreeMap;

use rotor_store::{Fetched, Selector, Stage, VersionId};
use tokio::time::Instant;

use super::{Check, Engine};
use crate::push::{PushAck, PushReply, PushRequest, PushSecret};

impl Engine {
    /// Checks every pin against the store (one refused pin refuses the
    /// whole request, which then changes nothing), applies the request,
    /// writes once, and answers with the version served per secret.
    pub(super) async fn handle_push(&mut self, request: PushRequest) {
        let PushRequest {
            body,
            received,
            reply,
        } = request;
        let names: Vec<PushSecret> = if body.secrets.is_empty() {
            self.tracked
                .keys()
                .map(|name| PushSecret {
                    name: name.clone(),
                    version: None,
                    announced: None,
                })
                .collect()
        } else {
            body.secrets
        };
        // Every pin is checked against the store before anything changes.
        let mut admitted = BTreeMap::new();
        let mut refused = Vec::new();
        for s in &names {
            if let (Some(version), true) = (&s.version, self.tracked.contains_key(&s.name)) {
                match self.admit_pin(&s.name, version).await {
                    PinAdmission::Refused(why) => {
                        tracing::warn!(
                            secret = s.name,
                            version,
                            "push refused: only the PENDING version may be pinned"
                        );
                        refused.push(PushAck {
                            name: s.name.clone(),
                            version: self.tracked[&s.name].version.as_ref().map(|v| v.0.clone()),
                            error: Some(why),
                        });
                    }
                    admission => {
                        admitted.insert(s.name.clone(), admission);
                    }
                }
            }
        }
        if !refused.is_empty() {
            let digest = self.writer.digest();
            let _ = reply.send(PushReply {
                digest,
                ok: false,
                refused: Some(
                    "refused: a pin may name only the store's PENDING version of a secret; nothing was changed"
                        .to_owned(),
                ),
                secrets: refused,
            });
            return;
        }
        let mut acks = Vec::new();
        let mut failed = false;
        for s in &names {
            let Some(t) = self.tracked.get_mut(&s.name) else {
                acks.push(PushAck {
                    name: s.name.clone(),
                    version: None,
                    error: Some("this pod does not read this secret".to_owned()),
                });
                failed = true;
                continue;
            };
            let outcome = match admitted.remove(&s.name) {
                Some(PinAdmission::Pending(fetched)) => {
                    t.pin = Some((fetched.version.clone(), Instant::now()));
                    self.install(&s.name, fetched)
                }
                Some(PinAdmission::Unavailable(e)) => {
                    tracing::warn!(secret = s.name, error = %e, "cannot check a pushed pin against the store; keeping what is served");
                    acks.push(PushAck {
                        name: s.name.clone(),
                        version: t.version.as_ref().map(|v| v.0.clone()),
                        error: Some(format!("cannot check the version against the store: {e}")),
                    });
                    failed = true;
                    continue;
                }
                // No version, or CURRENT named (refusals returned above).
                _ => match &s.announced {
                    // A new CURRENT the controller checked: one read, or
                    // none when it is served. A pin (a rotation's PENDING)
                    // stands: the rotation releases it, or it ends when its
                    // version stops being PENDING.
                    Some(v) if t.pin.is_some() || t.version.as_ref().is_some_and(|x| x.0 == *v) => {
                        Check::Unchanged
                    }
                    Some(_) => self.fetch(&s.name).await,
                    None => {
                        t.pin = None;
                        self.check(&s.name).await
                    }
                },
            };
            self.schedule(&s.name, outcome);
            failed |= matches!(outcome, Check::Failed | Check::Refused);
        }
        let written = self.publish("push", Some(received)).await;
        for s in names.iter().filter(|s| self.tracked.contains_key(&s.name)) {
            if acks.iter().any(|a| a.name == s.name) {
                continue;
            }
            let t = &self.tracked[&s.name];
            let mismatch = s
                .version
                .as_ref()
                .is_some_and(|v| t.version.as_ref().map(|x| &x.0) != Some(v));
            acks.push(PushAck {
                name: s.name.clone(),
                version: t.version.as_ref().map(|v| v.0.clone()),
                error: mismatch.then(|| "the requested version could not be fetched".to_owned()),
            });
            failed |= mismatch;
        }
        let _ = reply.send(PushReply {
            digest: self.writer.digest(),
            ok: written && !failed,
            refused: None,
            secrets: acks,
        });
    }

    /// Whether a push may pin `name` to `version`: only the store's PENDING
    /// version (the rotation target) may be pinned. Naming CURRENT is the
    /// same as naming no version. Anything else, such as an older and
    /// possibly revoked version, is refused.
    async fn admit_pin(&self, name: &str, version: &str) -> PinAdmission {
        let asked = VersionId(version.to_owned());
        let refused = |why: &str| {
            PinAdmission::Refused(format!(
                "version {version:?} of secret {name:?} cannot be pinned: {why}; \
                 only the store's PENDING version (the rotation target) may be pinned. \
                 To serve CURRENT again, push without a version"
            ))
        };
        match self
            .store
            .read(name, &Selector::Stage(Stage::Pending))
            .await
        {
            Ok(pending) if pending.version == asked => return PinAdmission::Pending(pending),
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return PinAdmission::Unavailable(e),
        }
        match self.store.current_version(name).await {
            Ok(current) if current == asked => PinAdmission::Current,
            Ok(_) => refused("it is not the PENDING version"),
            Err(e) if e.is_not_found() => refused("the secret has no such version"),
            Err(e) => PinAdmission::Unavailable(e),
        }
    }
}

/// What [`Engine::admit_pin`] found.
enum PinAdmission {
    /// The PENDING version, read.
    Pending(Fetched),
    /// The CURRENT version: serve CURRENT, no pin.
    Current,
    Refused(String),
    /// The store could not say.
    Unavailable(rotor_store::Error),
}
