//! The mutating admission webhook for Pods.
//!
//! `review` turns an AdmissionReview into a response (never panicking:
//! malformed input gets `invalid`, a bad pod `deny` with a message);
//! `inject` builds the injected pod, writing quantities as `quantity`
//! renders them; `server` serves `/mutate` over HTTPS
//! with certificates reloaded when their files change.

pub mod inject;
pub mod limits;
pub mod metrics;
pub mod quantity;
pub mod review;
pub mod server;

pub use inject::InjectConfig;
