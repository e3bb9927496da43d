//! One pod's Vault Agent Injector annotations translated into Rotor's.
//!
//! Every `vault.hashicorp.com/` annotation ends one of three ways: it is
//! translated (replaced by Rotor annotations, nothing to say), removed with
//! a reason (its setting belongs to the RotorStore or to rotor-controller,
//! or Rotor does it anyway), or kept with the reason it was not translated.
//! Nothing is dropped without a line saying so.

use std::collections::{BTreeMap, BTreeSet};

use rotor_contract::annotations::{self as rotor, parse_mode};
use rotor_contract::defaults::MOUNT_PATH;
use rotor_contract::names::validate_file_name;
use rotor_contract::vault_injector::{self as vault, PREFIX};

use super::consul_template::{self, Field, Piece};

/// Where Vault's injector writes the files unless told otherwise.
const VAULT_SECRETS_PATH: &str = "/vault/secrets";

/// What the translation needs to know about the Rotor side.
#[derive(Debug, Clone)]
pub struct Options {
    /// The RotorStore or ClusterRotorStore the pods read from.
    pub store: String,
    /// That store's KV v2 mount.
    pub mount: String,
}

/// What happened to one Vault annotation that was not simply translated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not translated: kept in the output.
    Kept,
    /// Removed: Rotor needs no counterpart on the pod.
    Removed,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    Annotation {
        annotation: String,
        outcome: Outcome,
        reason: String,
    },
    /// A difference the user should know of, though nothing was lost.
    Note(String),
}

/// A pod's translation: the annotations to remove and to add, and the report.
#[derive(Debug, Default)]
pub struct Translation {
    pub remove: BTreeSet<String>,
    pub add: Vec<(String, String)>,
    pub findings: Vec<Finding>,
}

impl Translation {
    fn kept(&mut self, annotation: &str, reason: impl Into<String>) {
        self.findings.push(Finding::Annotation {
            annotation: annotation.to_owned(),
            outcome: Outcome::Kept,
            reason: reason.into(),
        });
    }

    fn removed(&mut self, annotation: &str, reason: impl Into<String>) {
        self.remove.insert(annotation.to_owned());
        self.findings.push(Finding::Annotation {
            annotation: annotation.to_owned(),
            outcome: Outcome::Removed,
            reason: reason.into(),
        });
    }

    fn note(&mut self, text: impl Into<String>) {
        self.findings.push(Finding::Note(text.into()));
    }

    /// How many annotations were kept untranslated.
    pub fn kept_count(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| {
                matches!(
                    f,
                    Finding::Annotation {
                        outcome: Outcome::Kept,
                        ..
                    }
                )
            })
            .count()
    }
}

const STORE_SETTINGS: &str = "how Rotor reaches and logs in to Vault is the RotorStore's (spec.provider.vault), never a pod's";
const CONTROLLER_SETTINGS: &str = "the sidecar's image, resources, user and logs are rotor-controller's settings; the sidecar runs as the app's user";

/// Annotations that need no counterpart on a Rotor pod, with the reason.
fn removed_reason(name: &str, value: &str) -> Option<&'static str> {
    Some(match name {
        "auth-type" | "auth-path" | "service" | "namespace" | "ca-cert" | "ca-key"
        | "client-cert" | "client-key" | "tls-secret" | "tls-server-name" | "tls-skip-verify"
        | "proxy-address" | "client-max-retries" | "client-timeout" | "auth-min-backoff"
        | "auth-max-backoff" => STORE_SETTINGS,
        n if n.starts_with("auth-config-") => STORE_SETTINGS,
        "role" => {
            "the Vault role is the RotorStore's (spec.provider.vault.auth.kubernetes.role); it must admit this pod's service account"
        }
        "agent-image"
        | "agent-limits-cpu"
        | "agent-limits-mem"
        | "agent-limits-ephemeral"
        | "agent-requests-cpu"
        | "agent-requests-mem"
        | "agent-requests-ephemeral"
        | "log-level"
        | "log-format"
        | "agent-set-security-context"
        | "agent-run-as-user"
        | "agent-run-as-group"
        | "agent-run-as-same-user" => CONTROLLER_SETTINGS,
        "agent-init-first" | "agent-pre-populate" => {
            "Rotor's webhook places the sidecar itself, and the files are written before the app's containers start"
        }
        "agent-pre-populate-only" => {
            "Rotor's sidecar keeps running and keeps the files current; as a native sidecar it does not keep a Job from completing"
        }
        "agent-inject-status" if value == "update" => {
            "Rotor's webhook checks rotor.dev/ annotation changes on every update"
        }
        "template-config-exit-on-retry-failure" => {
            "Rotor's sidecar keeps the last good files and retries with backoff while the store fails"
        }
        "agent-inject-default-template" => {
            "a file without a template is the secret's JSON object in Rotor (the value itself when `value` is its only field)"
        }
        n if n.starts_with("error-on-missing-key-") => {
            "a Rotor file fails to render when a field it names is missing"
        }
        _ => return None,
    })
}

/// Why an annotation that Rotor has no counterpart for is kept.
fn kept_reason(name: &str) -> String {
    match name {
        "agent-configmap" => "Vault Agent's own configuration from a ConfigMap is not translated".to_owned(),
        "agent-inject-token" => "Rotor never hands its Vault token to the app".to_owned(),
        n if n.starts_with("agent-cache-") => {
            "Vault Agent's cache and proxy have no Rotor counterpart".to_owned()
        }
        "agent-extra-secret" | "agent-copy-volume-mounts" => {
            "Rotor's sidecar mounts only its own volumes".to_owned()
        }
        "agent-inject-containers" => {
            "Rotor's webhook mounts the files into every app container".to_owned()
        }
        "agent-inject-status" => "the manifest was taken from a pod that Vault's injector already changed (its agent containers are in the spec); translate the manifest the pod was created from".to_owned(),
        _ => "has no Rotor counterpart".to_owned(),
    }
}

/// The annotations of one secret file, by their Vault name.
#[derive(Debug, Default)]
struct FileSpec<'a> {
    secret: Option<(&'a str, &'a str)>,
    template: Option<(&'a str, &'a str)>,
    template_file: Option<(&'a str, &'a str)>,
    file: Option<(&'a str, &'a str)>,
    perms: Option<(&'a str, &'a str)>,
    command: Option<(&'a str, &'a str)>,
    volume_path: Option<(&'a str, &'a str)>,
    preserve_case: Option<(&'a str, &'a str)>,
}

impl<'a> FileSpec<'a> {
    fn all(&self) -> impl Iterator<Item = (&'a str, &'a str)> + '_ {
        [
            self.secret,
            self.template,
            self.template_file,
            self.file,
            self.perms,
            self.command,
            self.volume_path,
            self.preserve_case,
        ]
        .into_iter()
        .flatten()
    }
}

/// Where a translated file's content comes from.
enum Content {
    /// The whole secret, as Vault's default template would have printed it.
    Whole(String),
    /// A translated template.
    Template(Vec<Piece>),
}

/// Translates one pod's annotations (all of them, in order).
pub fn translate(annotations: &[(String, String)], options: &Options) -> Translation {
    let mut out = Translation::default();
    let pairs: Vec<(&str, &str)> = annotations
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let vault: Vec<(&str, &str)> = pairs
        .iter()
        .copied()
        .filter(|(k, _)| k.starts_with(PREFIX))
        .collect();
    if vault.is_empty() {
        return out;
    }
    if !vault::asks_injection(vault.iter().copied()) {
        out.note(format!(
            "{} is not \"true\": Vault's injector leaves this pod alone, and so does the translation",
            vault::AGENT_INJECT
        ));
        return out;
    }
    if pairs.iter().any(|(k, _)| k.starts_with(rotor::PREFIX)) {
        for (key, _) in &vault {
            out.kept(
                key,
                "the pod already has rotor.dev/ annotations; merge them by hand",
            );
        }
        return out;
    }

    let global_preserve_case = vault
        .iter()
        .any(|(k, v)| k.strip_prefix(PREFIX) == Some("preserve-secret-case") && vault::is_true(v));
    let mut files: BTreeMap<&str, FileSpec<'_>> = BTreeMap::new();
    let mut refresh = None;
    for &(key, value) in &vault {
        let name = &key[PREFIX.len()..];
        let per_file = [
            ("agent-inject-secret-", 0),
            ("agent-inject-template-file-", 1),
            ("agent-inject-template-", 2),
            ("agent-inject-file-", 3),
            ("agent-inject-perms-", 4),
            ("agent-inject-command-", 5),
            ("secret-volume-path-", 6),
            ("preserve-secret-case-", 7),
        ]
        .into_iter()
        .find_map(|(prefix, slot)| Some((name.strip_prefix(prefix)?, slot)));
        if let Some((file, slot)) = per_file
            && !file.is_empty()
        {
            let spec = files.entry(file).or_default();
            let field = match slot {
                0 => &mut spec.secret,
                1 => &mut spec.template_file,
                2 => &mut spec.template,
                3 => &mut spec.file,
                4 => &mut spec.perms,
                5 => &mut spec.command,
                6 => &mut spec.volume_path,
                _ => &mut spec.preserve_case,
            };
            *field = Some((key, value));
            continue;
        }
        match name {
            "agent-inject" | "preserve-secret-case" => {
                out.remove.insert(key.to_owned());
            }
            "secret-volume-path" => volume_path(&mut out, key, value),
            "template-static-secret-render-interval" => refresh = Some((key, value)),
            _ => match removed_reason(name, value) {
                Some(reason) => out.removed(key, reason),
                None => out.kept(key, kept_reason(name)),
            },
        }
    }

    let mut add: Vec<(String, String)> = vec![
        (rotor::INJECT.to_owned(), "true".to_owned()),
        (rotor::STORE.to_owned(), options.store.clone()),
    ];
    let mut secrets: Vec<(String, String)> = Vec::new();
    let mut templates: Vec<(String, String)> = Vec::new();
    let mut translated: Vec<(String, &FileSpec<'_>)> = Vec::new();
    let mut taken: BTreeSet<String> = BTreeSet::new();
    for (name, spec) in &files {
        let preserve =
            global_preserve_case || spec.preserve_case.is_some_and(|(_, v)| vault::is_true(v));
        let file = match spec.file {
            Some((_, f)) => f.to_owned(),
            None if preserve => (*name).to_owned(),
            None => name.to_lowercase(),
        };
        let content = file_content(spec, &file, options);
        let result = content.and_then(|content| {
            check_file_name(spec, &file)?;
            if let Some((_, path)) = spec.volume_path
                && path.trim_end_matches('/') != VAULT_SECRETS_PATH
            {
                return Err((spec.volume_path.unwrap().0, volume_path_reason()));
            }
            Ok(content)
        });
        match result {
            Err((key, reason)) => {
                for (other, _) in spec.all() {
                    if other == key {
                        out.kept(other, reason.clone());
                    } else {
                        out.kept(
                            other,
                            format!("belongs to the file {file:?}, which was not translated"),
                        );
                    }
                }
            }
            Ok(content) => {
                match content {
                    Content::Whole(secret) => {
                        out.note(format!(
                            "file {file:?}: Vault's default template printed the secret's data as Go maps; Rotor writes its fields as a JSON object (the value itself when `value` is its only field); use rotor.dev/secret.<file>: {secret}#<field> for one field"
                        ));
                        secrets.push((format!("{}{file}", rotor::SECRET_PREFIX), secret));
                    }
                    Content::Template(pieces) => match pieces.as_slice() {
                        [Piece::Field(field)] => secrets.push((
                            format!("{}{file}", rotor::SECRET_PREFIX),
                            format!("{}#{}", field.secret, field.key),
                        )),
                        _ => template_files(
                            &file,
                            &pieces,
                            &mut taken,
                            &files,
                            &mut secrets,
                            &mut templates,
                            &mut out,
                        ),
                    },
                }
                for (key, _) in spec.all() {
                    if Some(key) != spec.perms.map(|p| p.0)
                        && Some(key) != spec.command.map(|c| c.0)
                    {
                        out.remove.insert(key.to_owned());
                    }
                }
                taken.insert(file.clone());
                translated.push((file, spec));
            }
        }
    }
    add.extend(secrets);
    add.extend(templates);
    if let Some(mode) = file_mode(&translated, &mut out) {
        add.push((rotor::FILE_MODE.to_owned(), mode));
    }
    if let Some((key, value)) = refresh {
        match rotor::parse([(rotor::REFRESH, value)]) {
            Ok(_) => {
                out.remove.insert(key.to_owned());
                add.push((rotor::REFRESH.to_owned(), value.to_owned()));
            }
            Err(e) => out.kept(key, format!("is not a Rotor refresh interval: {e}")),
        }
    }
    if let Some(reload) = reload(&translated, options, &mut out) {
        add.push((rotor::RELOAD.to_owned(), reload));
    }

    if translated.is_empty() {
        return keep_all(
            &out,
            &vault,
            "no file of this pod was translated, so Vault's injector must still serve it",
        );
    }
    // The translation must be a contract the webhook accepts.
    if let Err(e) = rotor::parse(add.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
        return keep_all(
            &Translation::default(),
            &vault,
            &format!("the translation is not a valid Rotor contract: {e}"),
        );
    }
    out.note(format!(
        "the files appear under {MOUNT_PATH} (rotor-controller --mount-path), not {VAULT_SECRETS_PATH}: point the app at the new paths"
    ));
    out.add = add;
    out
}

/// Every Vault annotation kept: with its own reason where `partial` has
/// one, else with `reason`.
fn keep_all(partial: &Translation, vault: &[(&str, &str)], reason: &str) -> Translation {
    let mut out = Translation::default();
    for (key, _) in vault {
        let own = partial.findings.iter().find_map(|f| match f {
            Finding::Annotation {
                annotation,
                outcome: Outcome::Kept,
                reason,
            } if annotation == key => Some(reason.clone()),
            _ => None,
        });
        out.kept(key, own.unwrap_or_else(|| reason.to_owned()));
    }
    out
}

fn volume_path_reason() -> String {
    format!(
        "Rotor mounts the files at rotor-controller's --mount-path ({MOUNT_PATH} by default) in every pod; point the app there and remove this annotation"
    )
}

fn volume_path(out: &mut Translation, key: &str, value: &str) {
    if value.trim_end_matches('/') == VAULT_SECRETS_PATH {
        out.remove.insert(key.to_owned());
    } else {
        out.kept(key, volume_path_reason());
    }
}

/// What the file holds, or which annotation stops it and why.
fn file_content<'a>(
    spec: &FileSpec<'a>,
    file: &str,
    options: &Options,
) -> Result<Content, (&'a str, String)> {
    if let Some((key, template)) = spec.template {
        return consul_template::translate(template, &options.mount)
            .map(Content::Template)
            .map_err(|reason| (key, format!("the template {reason}")));
    }
    if let Some((key, _)) = spec.template_file {
        return Err((
            key,
            "reads its template from a file in the agent's container, which is not translated"
                .to_owned(),
        ));
    }
    if let Some((key, path)) = spec.secret {
        return consul_template::kv_secret_name(path, &options.mount)
            .map(Content::Whole)
            .map_err(|reason| (key, format!("the secret path {reason}")));
    }
    let (key, _) = spec.all().next().expect("a spec has an annotation");
    Err((
        key,
        format!(
            "no agent-inject-secret-{file} or agent-inject-template-{file} names what the file holds"
        ),
    ))
}

fn check_file_name<'a>(spec: &FileSpec<'a>, file: &str) -> Result<(), (&'a str, String)> {
    let key = spec
        .file
        .or(spec.secret)
        .or(spec.template)
        .map(|(k, _)| k)
        .unwrap_or_default();
    if file.contains('/') {
        return Err((
            key,
            format!(
                "writes the file {file:?} in a subdirectory; Rotor writes every file directly under its mount path"
            ),
        ));
    }
    validate_file_name(file).map_err(|e| (key, e.to_string()))
}

/// The helper files a template reads its fields from, and the template.
#[allow(clippy::too_many_arguments)]
fn template_files(
    file: &str,
    pieces: &[Piece],
    taken: &mut BTreeSet<String>,
    files: &BTreeMap<&str, FileSpec<'_>>,
    secrets: &mut Vec<(String, String)>,
    templates: &mut Vec<(String, String)>,
    out: &mut Translation,
) {
    let mut helpers: BTreeMap<&Field, String> = BTreeMap::new();
    for piece in pieces {
        let Piece::Field(field) = piece else { continue };
        if helpers.contains_key(field) {
            continue;
        }
        let free = |name: &String| {
            validate_file_name(name).is_ok()
                && !taken.contains(name)
                && !files.contains_key(name.as_str())
                && !helpers.values().any(|h| h == name)
        };
        let by_key = format!("{file}.{}", field.key);
        let name = if free(&by_key) {
            by_key
        } else {
            (1..)
                .map(|n| format!("{file}.{n}"))
                .find(|n| free(n))
                .expect("a free name")
        };
        helpers.insert(field, name);
    }
    for (field, helper) in &helpers {
        secrets.push((
            format!("{}{helper}", rotor::SECRET_PREFIX),
            format!("{}#{}", field.secret, field.key),
        ));
        taken.insert(helper.clone());
    }
    if !helpers.is_empty() {
        let names: Vec<&str> = helpers.values().map(String::as_str).collect();
        out.note(format!(
            "file {file:?} is a template over the files {}, which Rotor writes next to it (a Rotor template reads whole files, one field each)",
            names.join(", ")
        ));
    }
    let template = consul_template::minijinja(pieces, &|f| helpers[f].clone());
    templates.push((format!("{}{file}", rotor::TEMPLATE_PREFIX), template));
}

/// `rotor.dev/file-mode` from the files' `agent-inject-perms-*`, if one
/// mode serves them all.
fn file_mode(translated: &[(String, &FileSpec<'_>)], out: &mut Translation) -> Option<String> {
    let perms: Vec<(&str, &str)> = translated.iter().filter_map(|(_, s)| s.perms).collect();
    let modes: BTreeSet<&str> = perms.iter().map(|(_, v)| *v).collect();
    match modes.len() {
        0 => None,
        1 => {
            let mode = *modes.first().expect("one mode");
            match parse_mode(mode) {
                Ok(_) => {
                    out.remove
                        .extend(perms.iter().map(|(k, _)| (*k).to_owned()));
                    let without: Vec<&str> = translated
                        .iter()
                        .filter(|(_, s)| s.perms.is_none())
                        .map(|(f, _)| f.as_str())
                        .collect();
                    if !without.is_empty() {
                        out.note(format!(
                            "rotor.dev/file-mode {mode} applies to every file of the pod, also {}",
                            without.join(", ")
                        ));
                    }
                    Some(mode.to_owned())
                }
                Err(problem) => {
                    for (key, _) in perms {
                        out.kept(
                            key,
                            format!("the mode {mode:?} {problem}; Rotor allows no execute bits and no write for group or others"),
                        );
                    }
                    None
                }
            }
        }
        _ => {
            let listed: Vec<&str> = modes.into_iter().collect();
            for (key, _) in perms {
                out.kept(
                    key,
                    format!(
                        "Rotor sets one mode for all of a pod's files (rotor.dev/file-mode), and these ask for {}",
                        listed.join(", ")
                    ),
                );
            }
            None
        }
    }
}

/// `rotor.dev/reload` from the files' `agent-inject-command-*`.
fn reload(
    translated: &[(String, &FileSpec<'_>)],
    options: &Options,
    out: &mut Translation,
) -> Option<String> {
    let mut actions: Vec<String> = Vec::new();
    for (_, spec) in translated {
        let Some((key, command)) = spec.command else {
            continue;
        };
        match reload_action(command) {
            Ok(action) => {
                out.remove.insert(key.to_owned());
                if action.starts_with("exec:") {
                    out.note(format!(
                        "{key} became the reload action {action:?}: exec actions need spec.allowExecReload: true on the store {:?} (the webhook refuses the pod otherwise), and run in the sidecar's container",
                        options.store
                    ));
                }
                if !actions.contains(&action) {
                    actions.push(action);
                }
            }
            Err(reason) => out.kept(key, reason),
        }
    }
    if actions.is_empty() {
        return None;
    }
    if translated.len() > 1 {
        out.note("Rotor runs the reload actions once after any file of the pod changed, not after one file's change");
    }
    Some(actions.join(", "))
}

/// A Vault Agent command as a Rotor reload action: a signal sent by
/// process name, or a program run with its arguments.
pub fn reload_action(command: &str) -> Result<String, String> {
    let inner = shell_wrapped(command).unwrap_or(command);
    let words: Vec<&str> = inner.split_whitespace().collect();
    let signal = |flag: &str| -> Option<&'static str> {
        let name = flag.strip_prefix('-')?.to_ascii_uppercase();
        let name = name.strip_prefix("SIG").unwrap_or(&name);
        ["HUP", "USR1", "USR2", "TERM", "INT", "QUIT", "WINCH"]
            .into_iter()
            .find(|s| *s == name)
    };
    let process = |name: &str| {
        (!name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .then(|| name.to_owned())
    };
    let target = match words.as_slice() {
        ["pkill" | "killall", flag, name] => signal(flag).zip(process(name)),
        ["kill", flag, sub, name] if *sub == "$(pidof" => {
            signal(flag).zip(name.strip_suffix(')').and_then(process))
        }
        _ => None,
    };
    if let Some((signal, name)) = target {
        return Ok(format!("signal:{signal}:{name}"));
    }
    if command.contains([
        '\'', '"', '$', '`', '|', ';', '&', '<', '>', '(', ')', '*', '?', '\\', '\n', '~', '#',
    ]) {
        return Err(format!(
            "runs the shell command {command:?}; Rotor's exec: action runs one program with space-separated arguments and no shell: put the command in a script in the image and name that"
        ));
    }
    if command.contains(',') {
        return Err(format!(
            "has a comma in {command:?}, which separates actions in rotor.dev/reload"
        ));
    }
    if words.is_empty() {
        return Err("is empty".to_owned());
    }
    Ok(format!("exec:{}", words.join(" ")))
}

/// The command inside `sh -c '…'` (or `/bin/sh`, `bash`, `"…"`).
fn shell_wrapped(command: &str) -> Option<&str> {
    let rest = command.trim();
    let rest = ["/bin/sh", "sh", "/bin/bash", "bash"]
        .into_iter()
        .find_map(|sh| rest.strip_prefix(sh))?
        .trim_start()
        .strip_prefix("-c")?
        .trim();
    let quote = rest.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let inner = rest.strip_prefix(quote)?.strip_suffix(quote)?;
    (!inner.contains(quote)).then_some(inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> Options {
        Options {
            store: "vault".to_owned(),
            mount: "secret".to_owned(),
        }
    }

    fn pod(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// What the sidecar writes for the translated annotations, given the
    /// store's secrets as JSON objects.
    fn rendered(add: &[(String, String)], secrets: &[(&str, &str)]) -> BTreeMap<String, String> {
        let contract = rotor::parse(add.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
        let values = secrets
            .iter()
            .map(|(name, json)| (name.to_string(), json.as_bytes().to_vec().into()))
            .collect();
        rotor_sidecar::render::render(&contract, &values, 0o400)
            .unwrap()
            .into_iter()
            .map(|f| (f.name, String::from_utf8(f.data.to_vec()).unwrap()))
            .collect()
    }

    /// The sidecar renders the translation to the bytes Vault Agent wrote
    /// (computed by hand from Go's template rules), trailing newlines and
    /// trim markers included.
    #[test]
    fn translated_templates_render_what_vault_wrote() {
        let annotations = pod(&[
            ("vault.hashicorp.com/agent-inject", "true"),
            ("vault.hashicorp.com/role", "internal-app"),
            (
                "vault.hashicorp.com/agent-inject-secret-database-config.txt",
                "internal/data/database/config",
            ),
            (
                "vault.hashicorp.com/agent-inject-template-database-config.txt",
                "{{- with secret \"internal/data/database/config\" -}}\npostgresql://{{ .Data.data.username }}:{{ .Data.data.password }}@postgres:5432/wizard\n{{- end -}}\n",
            ),
            (
                "vault.hashicorp.com/agent-inject-secret-config",
                "internal/data/web",
            ),
            (
                "vault.hashicorp.com/agent-inject-template-config",
                "{{ with secret \"internal/data/web\" -}}\n  export api_key=\"{{ .Data.data.payments_api_key }}\"\n{{- end }}\n",
            ),
            (
                "vault.hashicorp.com/agent-inject-template-password",
                "{{- with secret \"internal/data/database/config\" -}}{{ .Data.data.password }}{{- end }}",
            ),
        ]);
        let options = Options {
            mount: "internal".to_owned(),
            ..options()
        };
        let t = translate(&annotations, &options);
        assert_eq!(t.kept_count(), 0, "{:#?}", t.findings);
        assert_eq!(t.remove.len(), annotations.len(), "{:?}", t.remove);
        // A template that is one field is that field, without a template.
        assert!(
            t.add.contains(&(
                "rotor.dev/secret.password".to_owned(),
                "database/config#password".to_owned()
            )),
            "{:?}",
            t.add
        );
        let files = rendered(
            &t.add,
            &[
                (
                    "database/config",
                    r#"{"username":"app","password":"pw{{x}}"}"#,
                ),
                ("web", r#"{"payments_api_key":"k-1"}"#),
            ],
        );
        assert_eq!(
            files["database-config.txt"],
            "postgresql://app:pw{{x}}@postgres:5432/wizard"
        );
        assert_eq!(files["config"], "export api_key=\"k-1\"\n");
        assert_eq!(files["password"], "pw{{x}}");
    }

    #[test]
    fn a_pod_with_nothing_translatable_keeps_every_vault_annotation() {
        let annotations = pod(&[
            ("vault.hashicorp.com/agent-inject", "true"),
            ("vault.hashicorp.com/role", "db-app"),
            (
                "vault.hashicorp.com/agent-inject-secret-db-creds",
                "database/creds/db-app",
            ),
        ]);
        let t = translate(&annotations, &options());
        assert!(t.add.is_empty() && t.remove.is_empty(), "{t:?}");
        assert_eq!(t.kept_count(), 3, "{:#?}", t.findings);
    }

    #[test]
    fn modes_refresh_and_untouched_pods() {
        let t = translate(
            &pod(&[
                ("vault.hashicorp.com/agent-inject", "true"),
                ("vault.hashicorp.com/agent-inject-secret-a", "secret/data/a"),
                ("vault.hashicorp.com/agent-inject-perms-a", "0440"),
                ("vault.hashicorp.com/agent-inject-secret-b", "secret/b"),
                (
                    "vault.hashicorp.com/template-static-secret-render-interval",
                    "5m",
                ),
            ]),
            &options(),
        );
        assert_eq!(t.kept_count(), 0, "{:#?}", t.findings);
        for pair in [
            ("rotor.dev/secret.a", "a"),
            ("rotor.dev/secret.b", "b"),
            ("rotor.dev/file-mode", "0440"),
            ("rotor.dev/refresh", "5m"),
        ] {
            assert!(
                t.add.contains(&(pair.0.to_owned(), pair.1.to_owned())),
                "{:?}",
                t.add
            );
        }
        // Two modes, and one Rotor refuses: kept, with the reason.
        let t = translate(
            &pod(&[
                ("vault.hashicorp.com/agent-inject", "true"),
                ("vault.hashicorp.com/agent-inject-secret-a", "secret/data/a"),
                ("vault.hashicorp.com/agent-inject-perms-a", "0755"),
            ]),
            &options(),
        );
        assert_eq!(t.kept_count(), 1, "{:#?}", t.findings);
        // agent-inject false, or no Vault annotation: nothing changes.
        for pairs in [
            vec![
                ("vault.hashicorp.com/agent-inject", "false"),
                ("vault.hashicorp.com/agent-inject-secret-a", "secret/a"),
            ],
            vec![("app", "x")],
        ] {
            let t = translate(&pod(&pairs), &options());
            assert!(
                t.add.is_empty() && t.remove.is_empty() && t.kept_count() == 0,
                "{t:?}"
            );
        }
    }

    #[test]
    fn reload_commands() {
        for (command, action) in [
            ("pkill -HUP nginx", "signal:HUP:nginx"),
            ("killall -SIGUSR1 app", "signal:USR1:app"),
            ("kill -HUP $(pidof myapp)", "signal:HUP:myapp"),
            ("/bin/sh -c 'kill -HUP $(pidof myapp)'", "signal:HUP:myapp"),
            (
                "/usr/local/bin/reload --soft",
                "exec:/usr/local/bin/reload --soft",
            ),
        ] {
            assert_eq!(reload_action(command).unwrap(), action, "{command}");
        }
        for (command, reason) in [
            ("sh -c 'cat /vault/secrets/a > /tmp/b'", "shell command"),
            ("kill -9 $(pidof app)", "shell command"),
            ("reload a,b", "comma"),
            ("  ", "empty"),
        ] {
            let err = reload_action(command).unwrap_err();
            assert!(err.contains(reason), "{command}: {err}");
        }
    }
}
