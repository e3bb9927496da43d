//! The channel's server as `rotor-controller run` builds it: streams
//! admitted by [`ClusterAuthority`] (TokenReview with Rotor's audience,
//! cached until each token expires; the pod as it is now; its
//! annotations; the shared store index), and refused with `NotLeader` on
//! a replica that does not hold the lease.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::auth::{ApiPods, CachedReviewer, ClusterAuthority, TokenReviewer};
use super::{ChannelMetrics, Hub, Limits, Server};
use crate::store_index::SharedStoreIndex;

/// Token reviews kept at once (one per connected pod, and a margin).
pub const MAX_CACHED_REVIEWS: usize = 20_000;

/// The stream server of a controller in a cluster.
pub fn server(
    client: kube::Client,
    stores: SharedStoreIndex,
    leader: Arc<AtomicBool>,
    metrics: ChannelMetrics,
) -> Arc<Server> {
    let limits = Limits::default();
    let authority = ClusterAuthority {
        reviewer: CachedReviewer::new(
            TokenReviewer {
                client: client.clone(),
                audience: rotor_channel::AUDIENCE.to_owned(),
            },
            MAX_CACHED_REVIEWS,
        ),
        pods: ApiPods { client },
        stores,
    };
    Arc::new(Server {
        hub: Arc::new(Hub::new(limits.streams_per_pod)),
        authority: Arc::new(authority),
        limits,
        metrics,
        leader: Some(leader),
    })
}
