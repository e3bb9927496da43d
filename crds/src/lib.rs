//! The annotation contract and Kubernetes API types shared by the sidecar and the controller.
