//! The pod-side agent that delivers secrets to tmpfs files.
