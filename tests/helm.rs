//! The Helm chart, without a helm binary: values.yaml against values.schema.json
//! (and values the schema must refuse), the README's install examples, and lint of the
//! templates: balanced actions, every .Values path defined, every RATELIMITD_ variable
//! a real flag, no secret on the command line.

use std::collections::BTreeSet;
use std::path::Path;

use clap::CommandFactory;
use ratelimitd::config::cli::Cli;
use serde_json::{Value, json};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/helm/ratelimitd");

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(CHART).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn values() -> Value {
    serde_yaml_ng::from_str(&read("values.yaml")).expect("values.yaml is YAML")
}

fn validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(&read("values.schema.json")).expect("the schema is JSON");
    jsonschema::validator_for(&schema).expect("a valid JSON Schema")
}

fn errors(validator: &jsonschema::Validator, values: &Value) -> Vec<String> {
    validator.iter_errors(values).map(|e| format!("{}: {e}", e.instance_path())).collect()
}

/// `values` with `patch` merged in (objects recursively).
fn with(mut values: Value, patch: Value) -> Value {
    fn merge(into: &mut Value, patch: Value) {
        match (into, patch) {
            (Value::Object(into), Value::Object(patch)) => {
                for (key, value) in patch {
                    merge(into.entry(key).or_insert(Value::Null), value);
                }
            }
            (into, patch) => *into = patch,
        }
    }
    merge(&mut values, patch);
    values
}

#[test]
fn values_yaml_follows_the_schema() {
    let problems = errors(&validator(), &values());
    assert!(problems.is_empty(), "values.yaml breaks values.schema.json: {problems:#?}");
}

#[test]
fn the_schema_refuses_values_that_cannot_work() {
    let validator = validator();
    let cases = [
        ("an unknown failure mode", json!({"failureMode": "maybe"})),
        ("a limit of 0", json!({"limit": 0})),
        ("a window without a unit", json!({"window": "60"})),
        ("a password in the Redis URL", json!({"redis": {"url": "redis://user:hunter2@redis:6379"}})),
        ("single mode without a URL", json!({"redis": {"url": ""}})),
        ("cluster mode without nodes", json!({"redis": {"mode": "cluster"}})),
        ("sentinel mode without sentinels", json!({"redis": {"mode": "sentinel"}})),
        ("an unknown Redis mode", json!({"redis": {"mode": "memcached"}})),
        ("TLS without its Secret", json!({"tls": {"enabled": true}})),
        ("a misspelt top-level key", json!({"replicas": 3})),
        ("extraArgs that are not flags", json!({"extraArgs": ["hunter2"]})),
        ("an unknown log format", json!({"logFormat": "xml"})),
        ("a limit above what a ring may hold", json!({"limit": 1_000_001})),
    ];
    for (what, patch) in cases {
        let problems = errors(&validator, &with(values(), patch));
        assert!(!problems.is_empty(), "the schema accepts {what}");
    }
}

#[test]
fn the_readme_install_examples_follow_the_schema() {
    let validator = validator();
    let examples = [
        json!({"redis": {"mode": "single", "url": "redis://redis-master:6379", "auth": {"existingSecret": "redis-auth"}},
               "fingerprintSecret": {"existingSecret": "ratelimitd-fingerprint"}}),
        json!({"redis": {"mode": "sentinel", "sentinel": {"masterName": "mymaster",
               "addresses": ["redis://redis-node-0.redis-headless:26379", "redis://redis-node-1.redis-headless:26379"]}},
               "fingerprintSecret": {"existingSecret": "ratelimitd-fingerprint"}}),
        json!({"redis": {"mode": "cluster", "clusterNodes": ["redis://redis-cluster-0.redis-cluster-headless:6379"]},
               "fingerprintSecret": {"existingSecret": "ratelimitd-fingerprint"}, "autoscaling": {"enabled": true}}),
    ];
    for example in examples {
        let problems = errors(&validator, &with(values(), example.clone()));
        assert!(problems.is_empty(), "{example}: {problems:#?}");
    }
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for mode in ["redis.mode=single", "redis.mode=sentinel", "redis.mode=cluster"] {
        assert!(readme.contains(mode), "the README has no helm install example with {mode}");
    }
}

fn templates() -> Vec<(String, String)> {
    let dir = Path::new(CHART).join("templates");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("templates/")
        .map(|entry| entry.expect("entry").path())
        .map(|path| (path.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&path).unwrap()))
        .collect();
    files.sort();
    files
}

/// The actions (`{{ ... }}`) of a template, comments left out.
fn actions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start..].find("}}") else {
            out.push("<unclosed>".into());
            break;
        };
        let action = rest[start + 2..start + len].trim_matches(|c: char| c == '-' || c.is_whitespace());
        if !action.starts_with("/*") {
            out.push(action.to_owned());
        }
        rest = &rest[start + len + 2..];
    }
    out
}

#[test]
fn templates_are_well_formed() {
    let files = templates();
    for expected in [
        "deployment.yaml",
        "service.yaml",
        "configmap.yaml",
        "pdb.yaml",
        "hpa.yaml",
        "servicemonitor.yaml",
        "prometheusrule.yaml",
        "networkpolicy.yaml",
        "dashboard-configmap.yaml",
        "serviceaccount.yaml",
        "NOTES.txt",
        "_helpers.tpl",
    ] {
        assert!(files.iter().any(|(name, _)| name == expected), "templates/{expected} is missing");
    }
    for (name, text) in &files {
        assert!(!text.contains('\t'), "{name}: tabs are not YAML indentation");
        assert_eq!(text.matches("{{").count(), text.matches("}}").count(), "{name}: unbalanced {{{{ }}}}");
        let actions = actions(text);
        assert!(!actions.contains(&"<unclosed>".to_owned()), "{name}: an action is not closed");
        let opened =
            actions.iter().filter(|a| ["if ", "with ", "range ", "define "].iter().any(|k| a.starts_with(k))).count();
        let closed = actions.iter().filter(|a| a.as_str() == "end").count();
        assert_eq!(opened, closed, "{name}: {opened} blocks opened, {closed} closed");
        for line in text.lines().filter(|l| !l.trim_start().starts_with("{{")) {
            let indent = line.len() - line.trim_start().len();
            assert!(indent % 2 == 0, "{name}: odd indentation in {line:?}");
        }
    }
}

/// `.Values.a.b` paths used by the templates.
fn value_paths(text: &str) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    for (i, _) in text.match_indices(".Values.") {
        let path: String =
            text[i + 8..].chars().take_while(|c| c.is_alphanumeric() || *c == '.' || *c == '_').collect();
        paths.insert(path.trim_end_matches('.').to_owned());
    }
    paths
}

#[test]
fn every_value_the_templates_use_is_defined() {
    let values = values();
    for (name, text) in templates() {
        for path in value_paths(&text) {
            let mut at = &values;
            for part in path.split('.') {
                at = at.get(part).unwrap_or_else(|| panic!("{name} uses .Values.{path}, which values.yaml lacks"));
            }
        }
    }
}

#[test]
fn the_deployment_configures_through_real_variables_and_keeps_secrets_off_the_command_line() {
    let deployment = read("templates/deployment.yaml");
    let known: BTreeSet<String> = Cli::command()
        .get_arguments()
        .filter_map(|arg| arg.get_env().map(|env| env.to_string_lossy().into_owned()))
        .collect();
    let used: BTreeSet<String> = deployment
        .match_indices("RATELIMITD_")
        .map(|(i, _)| deployment[i..].chars().take_while(|c| c.is_ascii_uppercase() || *c == '_').collect())
        .collect();
    assert!(used.len() > 20, "{used:?}");
    for variable in &used {
        assert!(known.contains(variable), "the deployment sets {variable}, which no flag reads");
    }
    for number in [".Values.limit |", ".Values.redis.connections |", ".Values.redis.batch |"] {
        let piped = deployment.split(number).nth(1).unwrap_or_default();
        assert!(
            piped.trim_start().starts_with("int64"),
            "{number} must go through int64 (Helm reads numbers as floats: 1e+06)"
        );
    }
    for secret in [
        "RATELIMITD_FINGERPRINT_SECRET\n",
        "RATELIMITD_FINGERPRINT_SECRET\"",
        "secretKeyRef",
        "--fingerprint-secret",
        "--redis-password",
    ] {
        assert!(!deployment.contains(secret), "secrets are mounted files, never env values or flags: found {secret}");
    }
    for must in
        ["readOnlyRootFilesystem", "runAsNonRoot", "RATELIMITD_EXPECTED_REPLICAS", "livenessProbe", "readinessProbe"]
    {
        let in_values = read("values.yaml").contains(must);
        assert!(deployment.contains(must) || in_values, "{must} is not set");
    }
}

#[test]
fn chart_metadata_matches_the_crate() {
    let chart: Value = serde_yaml_ng::from_str(&read("Chart.yaml")).expect("Chart.yaml is YAML");
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["name"], "ratelimitd");
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"), "appVersion follows Cargo.toml");
    let dashboard: Value = serde_json::from_str(&read("dashboards/ratelimitd.json")).expect("the dashboard is JSON");
    assert!(dashboard["panels"].is_array());
}
