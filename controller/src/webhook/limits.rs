//! What one AdmissionReview may hold, checked on its raw JSON before any
//! typed Pod is built, so that no shape of review costs more than a
//! bounded amount of memory and time.
//!
//! Two passes over the body allocate nothing per element: [`Shape::read`]
//! counts the pod's containers, init and ephemeral containers, volumes and
//! env entries (for a refusal that names the count and the limit), and
//! [`count_values`] bounds the JSON values of the whole review, which
//! bounds what the typed Pod and the patch built from it can cost (every
//! list a pod has, not just those named, is covered by it).
//!
//! Kubernetes caps a pod's annotations (256 KiB) but not its containers,
//! volumes or env. The caps are far above what real pods hold: a mesh
//! proxy, a log shipper and a few init steps take a pod to about ten
//! containers; each container is a process the kubelet runs, and pods with
//! more than a few dozen are not run in practice. Ephemeral containers
//! pile up (each `kubectl debug` adds one, none is removed), hence their
//! larger cap. Env lists of a few hundred entries exist (Spring and
//! twelve-factor apps); 4,096 per pod leaves room for ten of those.

use std::cell::Cell;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Containers in `spec.containers`.
pub const MAX_CONTAINERS: usize = 64;
/// Containers in `spec.initContainers`.
pub const MAX_INIT_CONTAINERS: usize = 64;
/// Containers in `spec.ephemeralContainers`.
pub const MAX_EPHEMERAL_CONTAINERS: usize = 128;
/// Entries in `spec.volumes`.
pub const MAX_VOLUMES: usize = 256;
/// `env` plus `envFrom` entries over every container of the pod.
pub const MAX_ENV: usize = 4096;
/// JSON values (objects, arrays, strings, numbers…) in the whole review:
/// a pod at every cap above with ordinary containers holds about 40,000.
pub const MAX_JSON_VALUES: usize = 100_000;

/// The largest answer sent: an injection patch is a few KiB (the sidecar,
/// its volumes, one mount per container), about 60 KiB at every cap
/// above; a larger one is refused.
pub const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// A limit one review went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Containers,
    InitContainers,
    EphemeralContainers,
    Volumes,
    Env,
    JsonValues,
}

impl Limit {
    pub fn max(self) -> usize {
        match self {
            Self::Containers => MAX_CONTAINERS,
            Self::InitContainers => MAX_INIT_CONTAINERS,
            Self::EphemeralContainers => MAX_EPHEMERAL_CONTAINERS,
            Self::Volumes => MAX_VOLUMES,
            Self::Env => MAX_ENV,
            Self::JsonValues => MAX_JSON_VALUES,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Self::Containers => "containers (spec.containers)",
            Self::InitContainers => "init containers (spec.initContainers)",
            Self::EphemeralContainers => "ephemeral containers (spec.ephemeralContainers)",
            Self::Volumes => "volumes (spec.volumes)",
            Self::Env => "env entries (env and envFrom over all containers)",
            Self::JsonValues => "JSON values in the AdmissionReview",
        }
    }
}

/// A review over one of the limits: which, and by how much.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exceeded {
    pub limit: Limit,
    /// The count found; for [`Limit::JsonValues`], counting stopped at
    /// the limit, so this is the limit plus one.
    pub count: usize,
    /// `oldObject` rather than `object`.
    pub old_object: bool,
}

impl fmt::Display for Exceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            limit,
            count,
            old_object,
        } = *self;
        let pod = if old_object {
            "the pod's old version"
        } else {
            "the pod"
        };
        if limit == Limit::JsonValues {
            return write!(
                f,
                "the AdmissionReview holds more than {} JSON values; Rotor's webhook reads at most {}",
                limit.max(),
                limit.max()
            );
        }
        write!(
            f,
            "{pod} has {count} {}; Rotor's webhook admits at most {} (a bound on the memory and time one review may take)",
            limit.what(),
            limit.max()
        )
    }
}

/// What the first pass learns about a review.
#[derive(Debug, Default, Deserialize)]
pub struct Shape {
    #[serde(rename = "apiVersion", default)]
    pub api_version: Option<String>,
    #[serde(default)]
    request: Option<RequestShape>,
}

#[derive(Debug, Default, Deserialize)]
struct RequestShape {
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    operation: Option<String>,
    #[serde(default)]
    object: Option<PodShape>,
    #[serde(rename = "oldObject", default)]
    old_object: Option<PodShape>,
}

#[derive(Debug, Default, Deserialize)]
struct PodShape {
    #[serde(default)]
    metadata: Option<MetaShape>,
    #[serde(default)]
    spec: Option<SpecShape>,
}

#[derive(Debug, Default, Deserialize)]
struct MetaShape {
    #[serde(default)]
    annotations: Option<RotorKeys>,
}

#[derive(Debug, Default, Deserialize)]
struct SpecShape {
    #[serde(default)]
    containers: Option<Containers>,
    #[serde(rename = "initContainers", default)]
    init_containers: Option<Containers>,
    #[serde(rename = "ephemeralContainers", default)]
    ephemeral_containers: Option<Containers>,
    #[serde(default)]
    volumes: Option<Count>,
}

#[derive(Debug, Default, Deserialize)]
struct ContainerShape {
    #[serde(default)]
    env: Option<Count>,
    #[serde(rename = "envFrom", default)]
    env_from: Option<Count>,
}

/// The length of a list, read without keeping its elements.
#[derive(Debug, Default, Clone, Copy)]
struct Count(usize);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Count;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Count, A::Error> {
                let mut n = 0;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(Count(n))
            }
        }
        d.deserialize_seq(V)
    }
}

/// A list of containers: how many, and their env entries in total.
#[derive(Debug, Default, Clone, Copy)]
struct Containers {
    count: usize,
    env: usize,
}

impl<'de> Deserialize<'de> for Containers {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Containers;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of containers")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Containers, A::Error> {
                let mut out = Containers::default();
                while let Some(c) = seq.next_element::<ContainerShape>()? {
                    out.count += 1;
                    let n = |c: Option<Count>| c.map_or(0, |c| c.0);
                    out.env = out.env.saturating_add(n(c.env) + n(c.env_from));
                }
                Ok(out)
            }
        }
        d.deserialize_seq(V)
    }
}

/// Whether a map has a `rotor.dev/` key (each key is dropped as read).
#[derive(Debug, Default, Clone, Copy)]
struct RotorKeys(bool);

impl<'de> Deserialize<'de> for RotorKeys {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RotorKeys;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of annotations")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RotorKeys, A::Error> {
                let mut any = false;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    any |= key.starts_with(rotor_contract::annotations::PREFIX);
                    map.next_value::<IgnoredAny>()?;
                }
                Ok(RotorKeys(any))
            }
        }
        d.deserialize_map(V)
    }
}

impl PodShape {
    fn rotor(&self) -> bool {
        self.metadata
            .as_ref()
            .and_then(|m| m.annotations)
            .is_some_and(|a| a.0)
    }

    fn exceeded(&self, old_object: bool) -> Option<Exceeded> {
        let spec = self.spec.as_ref()?;
        let list = |c: Option<Containers>| c.unwrap_or_default();
        let (containers, init, ephemeral) = (
            list(spec.containers),
            list(spec.init_containers),
            list(spec.ephemeral_containers),
        );
        let env = containers.env + init.env + ephemeral.env;
        [
            (Limit::Containers, containers.count),
            (Limit::InitContainers, init.count),
            (Limit::EphemeralContainers, ephemeral.count),
            (Limit::Volumes, spec.volumes.map_or(0, |v| v.0)),
            (Limit::Env, env),
        ]
        .into_iter()
        .find(|(limit, count)| *count > limit.max())
        .map(|(limit, count)| Exceeded {
            limit,
            count,
            old_object,
        })
    }
}

impl Shape {
    /// The first pass; an error when the body is not a review of this
    /// shape (the full parse then says why).
    pub fn read(body: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(body)
    }

    pub fn uid(&self) -> &str {
        self.request
            .as_ref()
            .and_then(|r| r.uid.as_deref())
            .unwrap_or_default()
    }

    pub fn operation(&self) -> Option<&str> {
        self.request.as_ref()?.operation.as_deref()
    }

    /// True when the pod (or its old version) has a `rotor.dev/`
    /// annotation: a review Rotor has to look at.
    pub fn rotor(&self) -> bool {
        self.request.as_ref().is_some_and(|r| {
            r.object.as_ref().is_some_and(PodShape::rotor)
                || r.old_object.as_ref().is_some_and(PodShape::rotor)
        })
    }

    /// The first limit the pod (then its old version) goes over.
    pub fn exceeded(&self) -> Option<Exceeded> {
        let r = self.request.as_ref()?;
        r.object
            .as_ref()
            .and_then(|p| p.exceeded(false))
            .or_else(|| r.old_object.as_ref().and_then(|p| p.exceeded(true)))
    }
}

/// Why [`count_values`] stopped.
#[derive(Debug)]
pub enum Unreadable {
    /// Not JSON at all.
    NotJson(serde_json::Error),
    /// More than [`MAX_JSON_VALUES`] values.
    TooMany(Exceeded),
}

/// Counts the JSON values of `body`, stopping past [`MAX_JSON_VALUES`];
/// nothing is kept (strings with escapes go through one reused buffer).
pub fn count_values(body: &[u8]) -> Result<usize, Unreadable> {
    let left = Cell::new(MAX_JSON_VALUES);
    let mut d = serde_json::Deserializer::from_slice(body);
    let result = Budget(&left).deserialize(&mut d).and_then(|()| d.end());
    match result {
        Ok(()) => Ok(MAX_JSON_VALUES - left.get()),
        Err(_) if left.get() == 0 => Err(Unreadable::TooMany(Exceeded {
            limit: Limit::JsonValues,
            count: MAX_JSON_VALUES + 1,
            old_object: false,
        })),
        Err(e) => Err(Unreadable::NotJson(e)),
    }
}

/// Takes one value from the count per value visited.
struct Budget<'a>(&'a Cell<usize>);

impl Budget<'_> {
    fn take<E: de::Error>(&self) -> Result<(), E> {
        match self.0.get() {
            0 => Err(E::custom("too many JSON values")),
            n => {
                self.0.set(n - 1);
                Ok(())
            }
        }
    }
}

impl<'de> DeserializeSeed<'de> for Budget<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Budget<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.take()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.take()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.take()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.take()
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.take()
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.take()
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.take()
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.take()?;
        while seq.next_element_seed(Budget(self.0))?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.take()?;
        while map.next_key::<IgnoredAny>()?.is_some() {
            map.next_value_seed(Budget(self.0))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(spec: serde_json::Value, annotations: serde_json::Value) -> Vec<u8> {
        serde_json::json!({
            "apiVersion": "admission.k8s.io/v1",
            "request": {"uid": "u", "operation": "CREATE", "object": {
                "metadata": {"annotations": annotations}, "spec": spec}}
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn each_cap_is_named_with_its_count() {
        let c = |n: usize, env: usize| {
            serde_json::Value::Array(
                (0..n)
                    .map(|i| serde_json::json!({"name": format!("c{i}"), "env": vec![serde_json::json!({"name": "A"}); env]}))
                    .collect(),
            )
        };
        let rotor = serde_json::json!({"rotor.dev/inject": "true"});
        for (spec, limit, count) in [
            (
                serde_json::json!({"containers": c(65, 0)}),
                Limit::Containers,
                65,
            ),
            (
                serde_json::json!({"containers": c(1, 0), "initContainers": c(70, 0)}),
                Limit::InitContainers,
                70,
            ),
            (
                serde_json::json!({"ephemeralContainers": c(129, 0)}),
                Limit::EphemeralContainers,
                129,
            ),
            (
                serde_json::json!({"volumes": vec![serde_json::json!({"name": "v"}); 300]}),
                Limit::Volumes,
                300,
            ),
            (
                serde_json::json!({"containers": c(2, 2049)}),
                Limit::Env,
                4098,
            ),
        ] {
            let shape = Shape::read(&review(spec, rotor.clone())).unwrap();
            assert!(shape.rotor());
            let e = shape.exceeded().expect("over a limit");
            assert_eq!((e.limit, e.count), (limit, count));
            let text = e.to_string();
            assert!(
                text.contains(&count.to_string()) && text.contains(&limit.max().to_string()),
                "{text}"
            );
        }
        let at_caps = serde_json::json!({"containers": c(64, 64), "initContainers": c(64, 0), "volumes": vec![serde_json::json!({"name": "v"}); 256]});
        let shape = Shape::read(&review(at_caps, serde_json::json!({"app": "x"}))).unwrap();
        assert_eq!(shape.exceeded(), None);
        assert!(!shape.rotor());
        assert_eq!(shape.uid(), "u");
        assert_eq!(shape.operation(), Some("CREATE"));
    }

    #[test]
    fn values_are_counted_up_to_the_cap() {
        assert_eq!(
            count_values(br#"{"a":[1,"x",null,{"b":true}]}"#).unwrap(),
            7
        );
        let many =
            serde_json::Value::Array(vec![serde_json::json!(1); MAX_JSON_VALUES]).to_string();
        assert!(matches!(
            count_values(many.as_bytes()),
            Err(Unreadable::TooMany(_))
        ));
        assert!(matches!(
            count_values(b"{not json"),
            Err(Unreadable::NotJson(_))
        ));
        assert!(matches!(
            count_values(b"{} {}"),
            Err(Unreadable::NotJson(_))
        ));
    }
}
