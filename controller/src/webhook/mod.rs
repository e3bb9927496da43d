//! The mutating admission webhook for Pods.
//!
//! `review` turns an AdmissionReview into a response (never panicking:
//! malformed input gets `invalid`, a bad pod `deny` with a message);
//! `update` says what of Rotor's annotations may change on a pod that
//! exists; `inject` builds the injected pod; `server` serves `/mutate` over HTTPS
//! with certificates reloaded when their files change.

pub mod inject;
pub mod review;
pub mod server;
pub mod update;

pub use inject::InjectConfig;
