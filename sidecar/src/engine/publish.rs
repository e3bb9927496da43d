//! Publishing: render the served values into files, write them, and run
//! the reload actions when the writer's report says the files changed.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use rotor_contract::annotations::{FileSource, PodSecrets, template_references};
use rotor_envelope::{ExposeSecret, Plaintext};
use tokio::time::Instant;

use super::Engine;
use crate::render::render;

impl Engine {
    /// Renders and writes the files from what is fetched; runs the reload
    /// actions when the writer's report says it swapped in changed files,
    /// after the first write.
    pub(super) async fn publish(&mut self, trigger: &str, since: Option<Instant>) -> bool {
        if !self.written_once && self.tracked.values().any(|t| t.value.is_none()) {
            return false; // not everything fetched yet
        }
        let (contract, values) = self.effective();
        let files = match render(&contract, &values, self.options.default_file_mode) {
            Ok(f) => {
                self.render_error = None;
                f
            }
            Err(e) => {
                tracing::error!(error = %e, "rendering failed; keeping the last good files");
                self.render_error = Some(e.to_string());
                return false;
            }
        };
        let written = self.writer.write(&files);
        self.shared
            .metrics
            .repairs(self.writer.repairs().load(Ordering::SeqCst));
        let report = match written {
            Ok(report) => report,
            Err(e) => {
                tracing::error!(error = %e, kind = e.metric_label(), "writing failed; not ready until a write works again");
                self.unwritten = true;
                self.shared.set_writes_failing(true);
                return false;
            }
        };
        let first = !self.written_once;
        self.written_once = true;
        self.unwritten = false;
        self.shared.ready.store(true, Ordering::Release);
        self.shared.set_writes_failing(false);
        if !report.swapped {
            tracing::debug!(
                trigger,
                "the rendered files are those served; nothing written"
            );
            return true;
        }
        self.shared.metrics.swapped();
        match since {
            Some(at) => self
                .shared
                .metrics
                .change_to_file(trigger, at.elapsed().as_secs_f64()),
            None => {
                // Measure from when the store made the newest version.
                if let Some(created) = self.tracked.values().filter_map(|t| t.created_at).max()
                    && let Ok(age) = SystemTime::now().duration_since(created)
                    && !first
                {
                    self.shared
                        .metrics
                        .change_to_file(trigger, age.as_secs_f64());
                }
            }
        }
        tracing::info!(
            files = files.len(),
            changed = ?report.changed,
            removed = ?report.removed,
            trigger,
            "files written"
        );
        if !first {
            self.reload().await;
        }
        true
    }

    /// The contract without files whose secret is gone (on-missing:
    /// delete) and templates that need them, plus the values.
    fn effective(&self) -> (PodSecrets, BTreeMap<String, Plaintext>) {
        let values: BTreeMap<String, Plaintext> = self
            .tracked
            .iter()
            .filter_map(|(k, t)| {
                t.value
                    .as_ref()
                    .map(|v| (k.clone(), Plaintext::from(v.expose_secret().to_vec())))
            })
            .collect();
        let mut contract = self.contract.clone();
        contract.files.retain(|_, source| match source {
            FileSource::Secret { name, .. } => values.contains_key(name),
            FileSource::Template { .. } => true,
        });
        let present = contract.files.clone();
        contract.files.retain(|_, source| match source {
            FileSource::Template { source } => template_references(source)
                .iter()
                .all(|r| present.contains_key(r)),
            FileSource::Secret { .. } => true,
        });
        (contract, values)
    }

    async fn reload(&self) {
        for action in &self.contract.reload {
            let started = Instant::now();
            let result = self.reloader.run(action).await;
            self.shared.metrics.reload(action.kind(), result.is_ok());
            match result {
                Ok(()) => {
                    tracing::info!(action = %action, elapsed = ?started.elapsed(), "reload action succeeded")
                }
                Err(e) => tracing::warn!(action = %action, error = %e, "reload action failed"),
            }
        }
    }
}
