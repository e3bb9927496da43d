//! The connected streams, by pod, and the requests waiting for their
//! acknowledgements. Rotation reaches its consumers through the hub
//! ([`StreamConsumers`]); each stream's task registers with it, takes the
//! requests meant for it, and completes them with the sidecar's [`Ack`].
//! Every answer is also recorded in [`Hub::served`]: which version each
//! pod serves.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use rotor_channel::{
    Ack, Downstream, ErrorKind, Pin, Problem, Release, RequestId, VersionAvailable,
};
use tokio::sync::{mpsc, oneshot, watch};

use super::auth::Admitted;
use crate::detect::{StoreRef, Subscription};
pub use crate::rotation::machine::Unanswered;
use crate::rotation::machine::{self, Consumers};
use crate::serving::Served;

/// What rotation asks of one consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Serve this PENDING version.
    Pin { secret: String, version: String },
    /// Serve CURRENT.
    Release { secret: String },
    /// A new CURRENT version exists.
    VersionAvailable { secret: String, version: String },
}

impl Request {
    fn secret(&self) -> &str {
        match self {
            Request::Pin { secret, .. }
            | Request::Release { secret }
            | Request::VersionAvailable { secret, .. } => secret,
        }
    }

    fn message(self, request: RequestId) -> Downstream {
        match self {
            Request::Pin { secret, version } => Downstream::Pin(Pin {
                request,
                secret,
                version,
            }),
            Request::Release { secret } => Downstream::Release(Release { request, secret }),
            Request::VersionAvailable { secret, version } => {
                Downstream::VersionAvailable(VersionAvailable {
                    request,
                    secret,
                    version,
                })
            }
        }
    }
}

struct Registered {
    stream: u64,
    admitted: Admitted,
    requests: mpsc::Sender<Downstream>,
}

/// A request sent and not answered yet.
struct Waiter {
    stream: u64,
    /// `namespace/pod`.
    pod: String,
    /// The secret the request is about (what the answer is recorded
    /// under, whatever the answer says).
    secret: String,
    tx: oneshot::Sender<Ack>,
}

#[derive(Default)]
struct Inner {
    /// `namespace/pod` → its streams, oldest first.
    pods: BTreeMap<String, Vec<Registered>>,
    waiting: HashMap<RequestId, Waiter>,
}

/// The connected streams.
pub struct Hub {
    streams_per_pod: usize,
    served: Served,
    next: AtomicU64,
    inner: Mutex<Inner>,
    /// What the change detector checks: the admitted streams'
    /// subscriptions, sent again whenever a stream comes or goes.
    subscriptions: watch::Sender<Vec<Subscription>>,
}

/// The detector's subscriptions of admitted streams: each secret of a
/// store some stream whose changes the controller detects reads, once, at
/// the shortest refresh asked for it (all the detector uses), so the list
/// is as long as the distinct secrets, not the streams.
pub fn subscriptions_of<'a>(streams: impl IntoIterator<Item = &'a Admitted>) -> Vec<Subscription> {
    let mut shortest: BTreeMap<(StoreRef, &'a str), Duration> = BTreeMap::new();
    for a in streams.into_iter().filter(|a| a.detects) {
        let store = store_ref(a);
        for secret in &a.secrets {
            shortest
                .entry((store.clone(), secret.as_str()))
                .and_modify(|r| *r = (*r).min(a.refresh))
                .or_insert(a.refresh);
        }
    }
    shortest
        .into_iter()
        .map(|((store, secret), refresh)| Subscription {
            store,
            secret: secret.to_owned(),
            refresh,
        })
        .collect()
}

/// The store an admitted stream reads, as the detector names it.
fn store_ref(admitted: &Admitted) -> StoreRef {
    StoreRef {
        namespace: admitted.identity.namespace.clone(),
        kind: admitted.kind,
        name: admitted.store.clone(),
    }
}

/// A stream's place in the hub; dropping it unregisters the stream and
/// fails the requests it has not answered.
pub struct Registration<'a> {
    hub: &'a Hub,
    pod: String,
    stream: u64,
}

impl Registration<'_> {
    /// The stream's id, which its acknowledgements are checked against.
    pub fn id(&self) -> u64 {
        self.stream
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut inner = self.hub.lock();
        if let Some(streams) = inner.pods.get_mut(&self.pod) {
            streams.retain(|s| s.stream != self.stream);
            if streams.is_empty() {
                inner.pods.remove(&self.pod);
                self.hub
                    .served
                    .disconnected(&self.pod, std::time::SystemTime::now());
            }
        }
        // Dropping the senders fails the waiters at once.
        let stream = self.stream;
        inner.waiting.retain(|_, w| w.stream != stream);
        self.hub.publish(&inner);
    }
}

impl Hub {
    pub fn new(streams_per_pod: usize) -> Self {
        Self {
            streams_per_pod,
            served: Served::default(),
            next: AtomicU64::new(1),
            inner: Mutex::new(Inner::default()),
            subscriptions: watch::Sender::new(Vec::new()),
        }
    }

    /// The detector's subscriptions ([`subscriptions_of`] the admitted
    /// streams), kept up to date as streams come and go.
    pub fn subscriptions(&self) -> watch::Receiver<Vec<Subscription>> {
        self.subscriptions.subscribe()
    }

    /// Sends the subscriptions of the streams in `inner`, if they changed.
    fn publish(&self, inner: &Inner) {
        let now = subscriptions_of(inner.pods.values().flatten().map(|r| &r.admitted));
        self.subscriptions.send_if_modified(|old| {
            let changed = *old != now;
            if changed {
                *old = now;
            }
            changed
        });
    }

    /// The pods whose newest stream subscribes to `secret` of `store`
    /// (those a change of it is announced to).
    pub fn subscribed(&self, store: &StoreRef, secret: &str) -> Vec<String> {
        self.lock()
            .pods
            .iter()
            .filter(|(_, streams)| {
                streams.last().is_some_and(|r| {
                    r.admitted.detects
                        && r.admitted.secrets.contains(secret)
                        && store_ref(&r.admitted) == *store
                })
            })
            .map(|(pod, _)| pod.clone())
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("channel hub lock")
    }

    fn id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers an admitted stream, unless its pod already has
    /// `streams_per_pod`.
    pub fn register(
        &self,
        admitted: Admitted,
        requests: mpsc::Sender<Downstream>,
    ) -> Result<Registration<'_>, Problem> {
        let pod = admitted.identity.key();
        let stream = self.id();
        let mut inner = self.lock();
        let streams = inner.pods.entry(pod.clone()).or_default();
        if streams.len() >= self.streams_per_pod {
            return Err(Problem::new(
                ErrorKind::TooManyStreams,
                format!(
                    "pod {pod} already has {} streams, the most a pod may hold",
                    streams.len()
                ),
            ));
        }
        streams.push(Registered {
            stream,
            admitted,
            requests,
        });
        self.served.connected(&pod);
        self.publish(&inner);
        Ok(Registration {
            hub: self,
            pod,
            stream,
        })
    }

    /// Which version each pod serves, from the answers so far.
    pub fn served(&self) -> &Served {
        &self.served
    }

    /// Completes a request with the sidecar's answer, and records what the
    /// pod now serves. An ack for a request this stream was not sent is
    /// ignored (and said so by `false`).
    pub fn complete(&self, stream: u64, ack: Ack) -> bool {
        let mut inner = self.lock();
        match inner.waiting.get(&ack.request) {
            Some(w) if w.stream == stream => {}
            _ => return false,
        }
        let Some(Waiter {
            pod, secret, tx, ..
        }) = inner.waiting.remove(&ack.request)
        else {
            return false;
        };
        drop(inner);
        self.served.record(
            &pod,
            &secret,
            ack.version.clone(),
            ack.digest.clone(),
            std::time::SystemTime::now(),
        );
        tx.send(ack).is_ok()
    }

    /// Sends `request` to the newest stream of `pod` and waits up to
    /// `deadline` for its acknowledgement.
    pub async fn ask(
        &self,
        pod: &str,
        request: Request,
        deadline: Duration,
    ) -> Result<Ack, Unanswered> {
        let id = RequestId(self.id());
        let (tx, rx) = oneshot::channel();
        let sender = {
            let mut inner = self.lock();
            let Some(stream) = inner.pods.get(pod).and_then(|s| s.last()) else {
                return Err(Unanswered::NotConnected);
            };
            if !stream.admitted.secrets.contains(request.secret()) {
                return Err(Unanswered::NotServed);
            }
            let waiter = Waiter {
                stream: stream.stream,
                pod: pod.to_owned(),
                secret: request.secret().to_owned(),
                tx,
            };
            let sender = stream.requests.clone();
            inner.waiting.insert(id, waiter);
            sender
        };
        let result = tokio::time::timeout(deadline, async {
            sender
                .send(request.message(id))
                .await
                .map_err(|_| Unanswered::Timeout)?;
            rx.await.map_err(|_| Unanswered::Timeout)
        })
        .await;
        self.lock().waiting.remove(&id);
        result.unwrap_or(Err(Unanswered::Timeout))
    }

    /// The pods whose streams serve `secret` from `store`.
    pub fn consumers_of(&self, store: &str, secret: &str) -> Vec<String> {
        self.lock()
            .pods
            .iter()
            .filter(|(_, s)| {
                s.iter()
                    .any(|r| r.admitted.store == store && r.admitted.secrets.contains(secret))
            })
            .map(|(pod, _)| pod.clone())
            .collect()
    }

    /// The pods with a stream whose admission `serves` accepts (standalone
    /// matches a policy's secret and store this way).
    pub fn pods_where(&self, serves: impl Fn(&Admitted) -> bool) -> Vec<String> {
        self.lock()
            .pods
            .iter()
            .filter(|(_, s)| s.iter().any(|r| serves(&r.admitted)))
            .map(|(pod, _)| pod.clone())
            .collect()
    }

    /// `namespace/pod` of every connected pod.
    pub fn connected(&self) -> BTreeSet<String> {
        self.lock().pods.keys().cloned().collect()
    }

    /// How many streams are registered.
    pub fn streams(&self) -> usize {
        self.lock().pods.values().map(Vec::len).sum()
    }
}

impl crate::rotation::reconciler::Streams for Hub {
    fn consumers(&self, pods: Vec<String>, deadline: Duration) -> Box<dyn Consumers + '_> {
        Box::new(StreamConsumers {
            hub: self,
            pods,
            deadline,
        })
    }

    fn served(&self) -> &Served {
        Hub::served(self)
    }
}

/// Rotation's consumers over the streams: each pod of `pods` is asked
/// through its stream, and one without a stream has not acknowledged.
pub struct StreamConsumers<'a> {
    pub hub: &'a Hub,
    /// `namespace/pod`.
    pub pods: Vec<String>,
    /// How long each pod has to acknowledge one request.
    pub deadline: Duration,
}

#[async_trait]
impl Consumers for StreamConsumers<'_> {
    async fn refresh(&self, secret: &str, version: Option<&str>) -> Vec<machine::Ack> {
        let asks = self.pods.iter().map(|pod| async move {
            let request = match version {
                Some(v) => Request::Pin {
                    secret: secret.to_owned(),
                    version: v.to_owned(),
                },
                None => Request::Release {
                    secret: secret.to_owned(),
                },
            };
            match self.hub.ask(pod, request, self.deadline).await {
                Ok(ack) => machine::Ack::answered(
                    pod.clone(),
                    ack.version,
                    ack.error.map(|p| p.to_string()),
                ),
                Err(why) => machine::Ack::unanswered(pod.clone(), why),
            }
        });
        futures_util::future::join_all(asks).await
    }
}
