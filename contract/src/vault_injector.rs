//! Vault Agent Injector's pod annotations, as far as Rotor needs them: the
//! webhook warns on a pod that asks for both injectors, and
//! `rotor migrate vault-injector` translates them into Rotor's.

/// The prefix of every Vault Agent Injector annotation.
pub const PREFIX: &str = "vault.hashicorp.com/";
/// `"true"` asks Vault's injector to add its agent to the pod.
pub const AGENT_INJECT: &str = "vault.hashicorp.com/agent-inject";

/// Whether Vault's injector reads `value` as true: it parses the value as
/// Go's `strconv.ParseBool` does.
pub fn is_true(value: &str) -> bool {
    matches!(value, "1" | "t" | "T" | "TRUE" | "true" | "True")
}

/// Whether a pod with these annotations asks Vault's injector for its agent.
pub fn asks_injection<'a>(annotations: impl IntoIterator<Item = (&'a str, &'a str)>) -> bool {
    annotations
        .into_iter()
        .any(|(k, v)| k == AGENT_INJECT && is_true(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_inject_is_read_as_go_reads_a_bool() {
        for yes in ["true", "True", "TRUE", "t", "T", "1"] {
            assert!(asks_injection([(AGENT_INJECT, yes)]), "{yes}");
        }
        for no in ["false", "0", "yes", "", " true"] {
            assert!(!asks_injection([(AGENT_INJECT, no)]), "{no:?}");
        }
        assert!(!asks_injection([("vault.hashicorp.com/role", "true")]));
    }
}
