//! charts/rotor without a cluster: `helm lint --strict`; with its defaults
//! it renders the same objects as `kubectl kustomize deploy/` (and with
//! cert-manager certificates, as deploy/cert-manager/), compared object by
//! object; with every value changed it renders valid objects that
//! checkov passes; a typo in the values fails; every value is documented.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use rotor_e2e::servers::{checkov, venv_bin};
use rotor_e2e::tools;
use serde_yaml_ng::Value;

/// The labels Helm's chart adds and kustomize's base has no use for.
const HELM_LABELS: [&str; 4] = [
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "helm.sh/chart",
];

fn root() -> PathBuf {
    rotor_e2e::workspace_root()
}

fn chart() -> PathBuf {
    root().join("charts/rotor")
}

fn values_file(name: &str) -> PathBuf {
    root().join("tests/chart-values").join(name)
}

fn helm_home() -> &'static tempfile::TempDir {
    static HOME: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    HOME.get_or_init(|| tempfile::tempdir().unwrap())
}

/// `helm <args>`: `Ok(stdout)` or `Err(stderr)`.
fn helm(args: &[&str]) -> Result<String, String> {
    let out = tools::helm(helm_home().path())
        .args(args)
        .output()
        .expect("run helm");
    let (stdout, stderr) = rotor_e2e::text(&out);
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{stderr}{stdout}"))
    }
}

/// `helm template rotor charts/rotor -n rotor-system --include-crds` with
/// these values files and `--set`s.
fn template(files: &[&Path], sets: &[&str]) -> Result<String, String> {
    let chart = chart();
    let mut args = vec![
        "template",
        "rotor",
        chart.to_str().unwrap(),
        "--namespace",
        "rotor-system",
        "--include-crds",
    ];
    for f in files {
        args.extend(["--values", f.to_str().unwrap()]);
    }
    for s in sets {
        args.extend(["--set", s]);
    }
    helm(&args)
}

fn kustomize(dir: &str) -> String {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(root().join(dir))
        .output()
        .expect("kubectl (with kustomize)");
    assert!(out.status.success(), "{}", rotor_e2e::text(&out).1);
    String::from_utf8(out.stdout).unwrap()
}

fn docs(yaml: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn key(doc: &Value) -> String {
    format!(
        "{}/{}/{}",
        doc["kind"].as_str().unwrap_or("?"),
        doc["metadata"]["namespace"].as_str().unwrap_or(""),
        doc["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// Removes Helm's own labels and checkov's skip annotations (whose text
/// names the tool to pin a digest with); everything else must be equal.
fn normalize(mut doc: Value) -> Value {
    let meta = doc["metadata"].as_mapping_mut().expect("metadata");
    if let Some(labels) = meta.get_mut("labels").and_then(Value::as_mapping_mut) {
        for l in HELM_LABELS {
            labels.remove(l);
        }
    }
    if let Some(annotations) = meta.get_mut("annotations").and_then(Value::as_mapping_mut) {
        annotations.retain(|k, _| !k.as_str().unwrap_or("").starts_with("checkov.io/"));
        if annotations.is_empty() {
            meta.remove("annotations");
        }
    }
    doc
}

fn objects(yaml: &str) -> BTreeMap<String, Value> {
    docs(yaml)
        .into_iter()
        .map(|d| (key(&d), canonical_cel(canonical_numbers(normalize(d)))))
        .collect()
}

/// matchConditions' CEL with whitespace runs as one space: kustomize
/// re-folds the `>-` scalar with an extra line break (whitespace between
/// CEL tokens; the expression's string literals hold none).
fn canonical_cel(mut doc: Value) -> Value {
    if let Some(hooks) = doc.get_mut("webhooks").and_then(Value::as_sequence_mut) {
        for hook in hooks {
            for c in hook
                .get_mut("matchConditions")
                .and_then(Value::as_sequence_mut)
                .into_iter()
                .flatten()
            {
                let e = c["expression"].as_str().unwrap_or_default();
                let literals = e.split('\'').skip(1).step_by(2);
                for l in literals {
                    assert!(
                        !l.contains(char::is_whitespace),
                        "a literal with spaces: {l:?}"
                    );
                }
                let folded = e.split_whitespace().collect::<Vec<_>>().join(" ");
                c["expression"] = Value::String(folded);
            }
        }
    }
    doc
}

/// Whole floats as integers: kustomize writes the CRDs' `minimum: 0.0` as
/// `0`, the same number.
fn canonical_numbers(v: Value) -> Value {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 1e15 => {
                Value::Number((f as i64).into())
            }
            _ => Value::Number(n),
        },
        Value::Sequence(s) => Value::Sequence(s.into_iter().map(canonical_numbers).collect()),
        Value::Mapping(m) => Value::Mapping(
            m.into_iter()
                .map(|(k, v)| (k, canonical_numbers(v)))
                .collect(),
        ),
        other => other,
    }
}

/// Helm installs crds/ as they are, untemplated, so the chart's CRDs lack
/// the `part-of` label kustomize adds to every object; that label (and an
/// emptied labels map) is all that may differ.
fn unlabel_crd(mut doc: Value) -> Value {
    let meta = doc["metadata"].as_mapping_mut().unwrap();
    if let Some(labels) = meta.get_mut("labels").and_then(Value::as_mapping_mut) {
        labels.remove("app.kubernetes.io/part-of");
        if labels.is_empty() {
            meta.remove("labels");
        }
    }
    doc
}

/// The chart's objects and kustomize's are the same, object by object,
/// but for deploy/'s Namespace, which Helm leaves to the installer.
fn assert_same_objects(helm_yaml: &str, kustomize_yaml: &str) {
    let chart = objects(helm_yaml);
    let mut deploy = objects(kustomize_yaml);
    assert!(
        deploy.remove("Namespace//rotor-system").is_some(),
        "deploy/ has no Namespace"
    );
    let only_chart: Vec<_> = chart.keys().filter(|k| !deploy.contains_key(*k)).collect();
    let only_deploy: Vec<_> = deploy.keys().filter(|k| !chart.contains_key(*k)).collect();
    assert!(
        only_chart.is_empty() && only_deploy.is_empty(),
        "objects only in the chart: {only_chart:?}; only in deploy/: {only_deploy:?}"
    );
    for (k, d) in &deploy {
        let (c, d) = if k.starts_with("CustomResourceDefinition/") {
            (unlabel_crd(chart[k].clone()), unlabel_crd(d.clone()))
        } else {
            (chart[k].clone(), d.clone())
        };
        let (c, d) = (&c, &d);
        assert!(
            c == d,
            "{k} differs:\n--- chart\n{}\n--- deploy/\n{}",
            serde_yaml_ng::to_string(c).unwrap(),
            serde_yaml_ng::to_string(d).unwrap()
        );
    }
    // Only CRDs went without the label.
    for (k, c) in &chart {
        if !k.starts_with("CustomResourceDefinition/") {
            assert_eq!(
                c["metadata"]["labels"]["app.kubernetes.io/part-of"], "rotor",
                "{k}"
            );
        }
    }
    // The comparison covered what matters most.
    for kind in [
        "ClusterRole/",
        "Role/rotor-system/",
        "MutatingWebhookConfiguration/",
        "ValidatingAdmissionPolicy/",
        "ValidatingAdmissionPolicyBinding/",
        "Deployment/rotor-system/",
        "CustomResourceDefinition/",
    ] {
        assert!(
            chart.keys().any(|k| k.starts_with(kind)),
            "no {kind} compared"
        );
    }
}

#[test]
fn helm_lint_strict_passes_with_defaults_and_with_every_value_changed() {
    let chart = chart();
    let everything = values_file("everything.yaml");
    let disabled = values_file("disabled.yaml");
    for extra in [
        vec![],
        vec!["--values", everything.to_str().unwrap()],
        vec!["--values", disabled.to_str().unwrap()],
    ] {
        let mut args = vec!["lint", "--strict", chart.to_str().unwrap()];
        args.extend(extra);
        let out = helm(&args).unwrap_or_else(|e| panic!("helm {args:?}: {e}"));
        assert!(out.contains("0 chart(s) failed"), "{out}");
    }
}

#[test]
fn defaults_render_the_same_objects_as_kustomize() {
    assert_same_objects(&template(&[], &[]).unwrap(), &kustomize("deploy"));
}

#[test]
fn cert_manager_mode_renders_the_same_objects_as_the_overlay() {
    assert_same_objects(
        &template(&[], &["certificates.mode=cert-manager"]).unwrap(),
        &kustomize("deploy/cert-manager"),
    );
}

#[test]
fn the_chart_ships_the_generated_crds() {
    let chart = std::fs::read_to_string(chart().join("crds/crds.yaml")).unwrap();
    let deploy = std::fs::read_to_string(root().join("deploy/crds/crds.yaml")).unwrap();
    assert!(
        chart == deploy,
        "charts/rotor/crds/crds.yaml differs from deploy/crds/crds.yaml; copy it (`cargo run -p rotor -- crds --out charts/rotor/crds`)"
    );
}

/// The rendered objects with every value changed, by kind/namespace/name.
fn everything() -> BTreeMap<String, Value> {
    docs(&template(&[&values_file("everything.yaml")], &[]).unwrap())
        .into_iter()
        .map(|d| (key(&d), d))
        .collect()
}

#[test]
fn every_changed_value_reaches_the_objects() {
    let all = everything();
    let deploy = &all["Deployment/rotor-system/rotor-controller"];
    let spec = &deploy["spec"]["template"]["spec"];
    let c = &spec["containers"][0];
    assert_eq!(deploy["spec"]["replicas"], 3);
    assert_eq!(
        c["image"],
        "registry.example.com/platform/rotor-controller@sha256:1111111111111111111111111111111111111111111111111111111111111111"
    );
    assert_eq!(c["imagePullPolicy"], "IfNotPresent");
    assert_eq!(spec["imagePullSecrets"][0]["name"], "registry-credentials");
    assert_eq!(c["resources"]["limits"]["memory"], "256Mi");
    assert_eq!(c["resources"]["requests"]["cpu"], "50m");
    assert_eq!(spec["nodeSelector"]["kubernetes.io/os"], "linux");
    assert_eq!(spec["tolerations"][0]["value"], "platform");
    assert!(spec["affinity"]["nodeAffinity"].is_mapping());
    assert!(spec["affinity"]["podAntiAffinity"].is_null());
    assert_eq!(spec["priorityClassName"], "system-cluster-critical");
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    for want in [
        "--sidecar-image=registry.example.com/platform/rotor-sidecar@sha256:2222222222222222222222222222222222222222222222222222222222222222",
        "--sidecar-pull-policy=IfNotPresent",
        "--mount-path=/var/run/app-secrets",
        "--size-limit=4Mi",
        "--classic-sidecar",
        "--sidecar-refresh=1m",
        "--sidecar-cpu-request=10m",
        "--sidecar-memory-request=24Mi",
        "--sidecar-cpu-limit=200m",
        "--sidecar-memory-limit=48Mi",
        "--metrics-addr=0.0.0.0:9091",
        "--rotator-service-account=secrets-rotator",
    ] {
        assert!(args.contains(&want), "{want} missing from {args:?}");
    }
    assert!(!args.contains(&"--self-managed-certs"), "{args:?}");
    let env = serde_yaml_ng::to_string(&c["env"]).unwrap();
    assert!(env.contains("value: text"), "{env}");
    assert!(env.contains("info,rotor_controller=debug"), "{env}");
    assert_eq!(c["ports"][1]["containerPort"], 9091);
    assert_eq!(
        spec["volumes"][0]["secret"]["secretName"],
        "rotor-webhook-tls"
    );

    assert_eq!(
        all["PodDisruptionBudget/rotor-system/rotor-controller"]["spec"]["minAvailable"],
        2
    );
    assert_eq!(
        all["NetworkPolicy/rotor-system/rotor-controller"]["spec"]["ingress"][0]["ports"][1]["port"],
        9091
    );
    let cert = &all["Certificate/rotor-system/rotor-webhook"];
    assert_eq!(cert["spec"]["issuerRef"]["name"], "corp-ca");
    assert_eq!(cert["spec"]["issuerRef"]["kind"], "ClusterIssuer");
    assert!(
        !all.contains_key("Issuer/rotor-system/rotor-selfsigned"),
        "a self-signed Issuer beside an issuerRef"
    );

    let hook = &all["MutatingWebhookConfiguration//rotor-webhook"];
    let w = &hook["webhooks"][0];
    assert_eq!(w["failurePolicy"], "Ignore");
    assert_eq!(w["timeoutSeconds"], 10);
    assert_eq!(
        hook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "rotor-system/rotor-webhook"
    );
    let selector = &w["namespaceSelector"];
    assert_eq!(selector["matchLabels"]["rotor.dev/enabled"], "true");
    let excluded = &selector["matchExpressions"][0];
    assert_eq!(excluded["operator"], "NotIn");
    let names: Vec<&str> = excluded["values"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["rotor-system", "kube-system", "kube-public", "monitoring"]
    );
    assert_eq!(selector["matchExpressions"][1]["key"], "environment");
    assert!(
        w["matchConditions"][0]["expression"]
            .as_str()
            .unwrap()
            .contains("rotor.dev/")
    );

    let metrics = &all["Service/rotor-system/rotor-controller-metrics"];
    assert_eq!(metrics["spec"]["ports"][0]["port"], 9091);
    let monitor = &all["ServiceMonitor/rotor-system/rotor-controller"];
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(monitor["spec"]["endpoints"][0]["interval"], "15s");
    // The monitor selects the metrics Service, not the webhook's.
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .unwrap()
    {
        assert_eq!(&metrics["metadata"]["labels"][k], v, "{k:?}");
    }
    assert!(
        all["Service/rotor-system/rotor-webhook"]["metadata"]["labels"]
            ["app.kubernetes.io/component"]
            .is_null()
    );

    // The alert rules, with every threshold and their labels as set.
    let rules = &all["PrometheusRule/rotor-system/rotor"];
    assert_eq!(rules["metadata"]["labels"]["release"], "prometheus");
    let exprs = serde_yaml_ng::to_string(&rules["spec"]).unwrap();
    for threshold in [
        "> 0.5\n",
        "< 45 * 86400\n",
        "> 7200\n",
        "rotor_secret_staleness_seconds > 300\n",
    ] {
        assert!(exprs.contains(threshold), "{threshold:?} not in {exprs}");
    }
    assert!(
        !template(&[], &[]).unwrap().contains("kind: PrometheusRule"),
        "the alert rules are off by default"
    );

    let token_rule = all["ClusterRole//rotor-controller"]["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|r| r["resources"][0] == "serviceaccounts/token")
        .expect("a rule for serviceaccounts/token");
    assert_eq!(token_rule["resourceNames"][0], "secrets-rotator");
    assert!(token_rule["resourceNames"][1].is_null(), "{token_rule:?}");

    let off = template(&[&values_file("disabled.yaml")], &[]).unwrap();
    for kind in ["PodDisruptionBudget", "NetworkPolicy"] {
        assert!(!off.contains(&format!("kind: {kind}")), "{kind} rendered");
    }
}

/// Objects of kinds kubernetes-validate has schemas for: Kubernetes' own.
/// cert-manager's and the Prometheus Operator's are checked by the
/// assertions above instead.
fn builtin_only(yaml: &str) -> String {
    docs(yaml)
        .into_iter()
        .filter(|d| {
            let api = d["apiVersion"].as_str().unwrap_or("");
            !api.starts_with("cert-manager.io/") && !api.starts_with("monitoring.coreos.com/")
        })
        .map(|d| serde_yaml_ng::to_string(&d).unwrap())
        .collect::<Vec<_>>()
        .join("---\n")
}

fn validate_strict(file: &Path) {
    let out = Command::new(venv_bin("kubernetes-validate"))
        .arg("--strict")
        .arg(file)
        .output()
        .unwrap();
    let (stdout, stderr) = rotor_e2e::text(&out);
    assert!(
        out.status.success() && !stdout.contains("ERROR") && !stderr.contains("ERROR"),
        "{}:\n{stdout}{stderr}",
        file.display()
    );
}

#[test]
fn every_rendering_validates_strictly_and_passes_checkov() {
    let dir = tempfile::tempdir().unwrap();
    let renders = [
        ("defaults", template(&[], &[]).unwrap(), &[][..]),
        (
            "cert-manager",
            template(&[], &["certificates.mode=cert-manager"]).unwrap(),
            &[],
        ),
        (
            "everything",
            template(&[&values_file("everything.yaml")], &[]).unwrap(),
            &[],
        ),
        // Without the chart's NetworkPolicy checkov rightly says the pods
        // lack one: switching it off is for clusters with a policy of
        // their own (or a CNI without NetworkPolicy), so that is all it may
        // say.
        (
            "disabled",
            template(&[&values_file("disabled.yaml")], &[]).unwrap(),
            &["CKV2_K8S_6"],
        ),
    ];
    for (name, yaml, skip) in renders {
        let all = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&all, &yaml).unwrap();
        let builtin = dir.path().join(format!("{name}-builtin.yaml"));
        std::fs::write(&builtin, builtin_only(&yaml)).unwrap();
        validate_strict(&builtin);
        checkov(&all, skip);
    }
}

#[test]
fn typos_and_wrong_types_in_values_fail() {
    for (set, says) in [
        (
            "replicaCont=3",
            "additional properties 'replicaCont' not allowed",
        ),
        (
            "sidecar.mountpath=/x",
            "additional properties 'mountpath' not allowed",
        ),
        (
            "image.controller.pulPolicy=Always",
            "additional properties 'pulPolicy' not allowed",
        ),
        ("replicaCount=two", "replicaCount"),
        ("certificates.mode=vault", "certificates/mode"),
        ("webhook.failurePolicy=fail", "webhook/failurePolicy"),
        ("image.sidecar.digest=sha256:abc", "image/sidecar/digest"),
        (
            "sidecar.resources.limits.memory=32MB",
            "sidecar/resources/limits/memory",
        ),
        ("logFormat=yaml", "logFormat"),
        ("sidecar.refresh=often", "sidecar/refresh"),
    ] {
        match template(&[], &[set]) {
            Ok(_) => panic!("--set {set} rendered"),
            Err(e) => assert!(
                e.contains("values don't meet the specifications of the schema")
                    && e.contains(says),
                "--set {set}: {e}"
            ),
        }
    }
}

/// The leaves of a values tree: scalars, lists and empty maps, as dotted
/// paths.
fn leaves(v: &Value, prefix: &str, out: &mut BTreeMap<String, Value>) {
    match v.as_mapping() {
        Some(m) if !m.is_empty() => {
            for (k, v) in m {
                let k = k.as_str().unwrap();
                let path = if prefix.is_empty() {
                    k.to_owned()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(v, &path, out);
            }
        }
        _ => {
            out.insert(prefix.to_owned(), v.clone());
        }
    }
}

fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

#[test]
fn every_value_is_documented_and_exercised() {
    let values: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(chart().join("values.yaml")).unwrap())
            .unwrap();
    let mut all = BTreeMap::new();
    leaves(&values, "", &mut all);
    assert!(all.len() > 30, "{all:?}");
    let readme = std::fs::read_to_string(chart().join("README.md")).unwrap();
    let changed: Vec<Value> = ["everything.yaml", "disabled.yaml"]
        .iter()
        .map(|f| {
            serde_yaml_ng::from_str(&std::fs::read_to_string(values_file(f)).unwrap()).unwrap()
        })
        .collect();
    for (path, default) in &all {
        assert!(
            readme.contains(&format!("| `{path}` |")),
            "charts/rotor/README.md has no row for `{path}`"
        );
        assert!(
            changed
                .iter()
                .any(|c| lookup(c, path).is_some_and(|v| v != default)),
            "tests/chart-values/ never changes `{path}`"
        );
    }
    // And the README documents nothing that is not a value.
    for line in readme.lines().filter(|l| l.starts_with("| `")) {
        let path = line[3..].split('`').next().unwrap();
        assert!(
            all.contains_key(path),
            "README row for unknown value `{path}`"
        );
    }
}
