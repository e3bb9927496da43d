//! The admission webhook, reconcilers and scheduled rotation.
