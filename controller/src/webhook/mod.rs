//! The mutating admission webhook for Pods.
//!
//! `review` turns an AdmissionReview into a response (never panicking:
//! malformed input gets `invalid`, a bad pod `deny` with a message);
//! `update` says what of Rotor's annotations may change on a pod that
//! exists; `inject` builds the injected pod, writing quantities as
//! `quantity` renders them; `limits` bounds what a review may hold;
//! `server` serves `/mutate` over HTTPS
//! with certificates reloaded when their files change.

pub mod inject;
pub mod limits;
pub mod metrics;
pub mod quantity;
pub mod review;
pub mod server;
pub mod update;

pub use inject::InjectConfig;
