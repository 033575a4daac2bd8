//! The Helm chart, without a helm binary: values.yaml against values.schema.json (and
//! values the schema must refuse), and the chart rendered for real by Helm's SDK
//! (scripts/chart-check.py) for the docs' install examples and a matrix of values, every
//! manifest validated against Kubernetes' schemas, and what matters in them asserted.

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
        ("a limits file with no content", json!({"limitsFile": {"enabled": true, "content": "  \n"}})),
        ("the in-process store with several replicas", json!({"redis": {"mode": "none"}, "replicaCount": 2})),
        ("the in-process store with autoscaling", json!({"redis": {"mode": "none"}, "autoscaling": {"enabled": true}})),
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

/// The Python of the venv scripts/test makes for scripts/chart-check.py (helm-python-sdk,
/// kubernetes-validate, PyYAML), or RATELIMITD_TEST_CHART_PYTHON.
fn chart_python() -> std::path::PathBuf {
    let path = std::env::var_os("RATELIMITD_TEST_CHART_PYTHON")
        .map(Into::into)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/chart/bin/python"));
    assert!(
        path.exists(),
        "no {}: run scripts/test, which installs helm-python-sdk and kubernetes-validate",
        path.display()
    );
    path
}

/// scripts/chart-check.py's report on `cases` and on the `helm install` examples of
/// docs/operations.md: each rendered by Helm's SDK, every manifest validated.
fn render(cases: &[(&str, Value)]) -> Value {
    use std::io::Write as _;
    let root = env!("CARGO_MANIFEST_DIR");
    let cases: Vec<Value> = cases.iter().map(|(name, values)| json!({"name": name, "values": values})).collect();
    let request = json!({"chart": CHART, "docs": format!("{root}/docs/operations.md"), "cases": cases});
    let mut child = std::process::Command::new(chart_python())
        .arg(format!("{root}/scripts/chart-check.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run scripts/chart-check.py");
    child.stdin.take().unwrap().write_all(request.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "chart-check.py: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("chart-check.py prints JSON")
}

fn objects<'a>(case: &'a Value, kind: &str) -> Vec<&'a Value> {
    case["objects"].as_array().unwrap().iter().filter(|o| o["kind"] == kind).collect()
}

/// The ratelimitd container of the case's Deployment.
fn container(case: &Value) -> &Value {
    let deployments = objects(case, "Deployment");
    assert_eq!(deployments.len(), 1, "{}", case["values"]);
    &deployments[0]["spec"]["template"]["spec"]["containers"][0]
}

fn env<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"].as_array()?.iter().find(|e| e["name"] == name)?["value"].as_str()
}

/// The Secret mounted where `file` lies, if any.
fn secret_holding<'a>(case: &'a Value, file: &str) -> Option<&'a str> {
    let pod = &objects(case, "Deployment")[0]["spec"]["template"]["spec"];
    let mount = pod["containers"][0]["volumeMounts"]
        .as_array()?
        .iter()
        .find(|m| m["mountPath"].as_str().is_some_and(|dir| file.starts_with(&format!("{dir}/"))))?;
    let volume = pod["volumes"].as_array()?.iter().find(|v| v["name"] == mount["name"])?;
    volume["secret"]["secretName"].as_str()
}

/// Every optional part on, once with TLS and once with readiness following Redis (the
/// kubelet's gRPC probe speaks plaintext).
fn everything(tls: bool) -> Value {
    let mut values = json!({
        "redis": {"mode": "single", "url": "rediss://redis:6380", "auth": {"existingSecret": "redis-auth"},
                  "tls": {"caSecret": "redis-ca", "clientCertSecret": "redis-client"}},
        "fingerprintSecret": {"existingSecret": "fp"},
        "limitsFile": {"enabled": true, "content": "overrides: []\n"},
        "autoscaling": {"enabled": true, "minReplicas": 4, "maxReplicas": 12},
        "serviceMonitor": {"enabled": true}, "prometheusRule": {"enabled": true},
        "networkPolicy": {"enabled": true}, "grafanaDashboard": {"enabled": true},
        "service": {"headless": {"enabled": true}},
        "podAnnotations": {"prometheus.io/scrape": "yes", "team": "platform"},
        "topologySpread": {"enabled": true},
    });
    if tls {
        values["tls"] = json!({"enabled": true, "secretName": "ratelimitd-tls", "clientCASecret": "gateways-ca"});
    } else {
        values["probes"] = json!({"readinessFollowsRedis": true});
    }
    values
}

/// The chart rendered for real (Helm v4's SDK through PyPI's helm-python-sdk): the install
/// examples of docs/operations.md and a matrix of values render, `helm lint --strict` finds
/// only the missing icon, and every manifest passes kubernetes-validate --strict for
/// Kubernetes 1.30 with no key twice; then what matters in them is asserted.
#[test]
fn the_chart_renders_valid_manifests_for_every_example_and_option() {
    let report = render(&[
        ("everything, TLS", everything(true)),
        ("everything, readiness follows Redis", everything(false)),
        ("in process", json!({"redis": {"mode": "none"}, "replicaCount": 1})),
    ]);
    assert_eq!(report["lint"], json!(["icon is recommended"]), "helm lint --strict");
    let cases = report["cases"].as_object().unwrap();
    for (name, case) in cases {
        assert_eq!(case["problems"], json!([]), "{name}");
        println!("{name}: {} manifests valid", case["objects"].as_array().unwrap().len());
    }
    let examples: Vec<&Value> = cases.iter().filter(|(n, _)| n.starts_with("operations.md")).map(|(_, c)| c).collect();
    assert_eq!(examples.len(), 3, "docs/operations.md's three helm install examples");

    // Every variable the Deployment sets is a real flag's; secrets are files from Secrets.
    let known: BTreeSet<String> = Cli::command()
        .get_arguments()
        .filter_map(|arg| arg.get_env().map(|env| env.to_string_lossy().into_owned()))
        .collect();
    for case in cases.values() {
        let container = container(case);
        for variable in container["env"].as_array().unwrap() {
            let name = variable["name"].as_str().unwrap();
            assert!(known.contains(name), "the Deployment sets {name}, which no flag reads");
            assert!(variable.get("valueFrom").is_none(), "{name}: secrets are mounted files, not env values");
        }
        assert!(container.get("args").is_none(), "no flag (and so no secret) on the command line");
        assert!(container["startupProbe"]["tcpSocket"].is_object(), "a startup probe");
    }
    let single = examples.iter().find(|c| c["values"]["redis"]["mode"] == "single").unwrap();
    let c = container(single);
    assert_eq!(env(c, "RATELIMITD_REDIS_URL"), Some("redis://redis-master:6379"));
    assert_eq!(env(c, "RATELIMITD_EXPECTED_REPLICAS"), Some("3"), "replicaCount");
    let password = env(c, "RATELIMITD_REDIS_PASSWORD_FILE").unwrap();
    assert_eq!(secret_holding(single, password), Some("redis-auth"));
    let secret = env(c, "RATELIMITD_FINGERPRINT_SECRET_FILE").unwrap();
    assert_eq!(secret_holding(single, secret), Some("ratelimitd-fingerprint"));

    let all = &cases["everything, readiness follows Redis"];
    let c = container(all);
    assert_eq!(env(c, "RATELIMITD_EXPECTED_REPLICAS"), Some("4"), "the autoscaler's minimum: a floor");
    assert_eq!(c["readinessProbe"]["grpc"]["service"], "", "readinessFollowsRedis asks the whole server");
    let single_probe = &container(single)["readinessProbe"]["grpc"];
    assert_eq!(
        single_probe["service"], "ratelimitd.readiness",
        "by default readiness fails only when Redis refuses us"
    );
    assert!(container(&cases["everything, TLS"])["readinessProbe"]["tcpSocket"].is_object(), "TCP under TLS");
    let annotations = &objects(all, "Deployment")[0]["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations, &json!({"prometheus.io/scrape": "yes", "prometheus.io/port": "9090", "team": "platform"}));
    let services = objects(all, "Service");
    assert_eq!(services.len(), 2);
    assert!(services.iter().any(|s| s["spec"]["clusterIP"] == "None"), "the headless Service");
    let hook = objects(all, "Pod");
    assert_eq!(hook.len(), 1, "the helm test hook");
    assert_eq!(hook[0]["metadata"]["annotations"]["helm.sh/hook"], "test");
    assert_eq!(hook[0]["spec"]["containers"][0]["args"], json!(["probe", "rl-ratelimitd:50051"]));
    let policy = objects(all, "NetworkPolicy")[0];
    for rule in policy["spec"]["ingress"].as_array().unwrap() {
        assert!(rule.get("from").is_none(), "by default any namespace may call and scrape: {rule}");
    }
    let redis_ports: Vec<&Value> =
        policy["spec"]["egress"][1]["ports"].as_array().unwrap().iter().map(|p| &p["port"]).collect();
    assert_eq!(redis_ports, [&json!(6379), &json!(6380), &json!(26379)]);
    let rules: Value = serde_yaml_ng::from_str(&read("alerts/ratelimitd.rules.yaml")).unwrap();
    assert_eq!(objects(all, "PrometheusRule")[0]["spec"]["groups"], rules["groups"], "the rules file, as it is");
    for kind in ["HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor", "ConfigMap"] {
        assert!(!objects(all, kind).is_empty(), "{kind} is missing");
    }
    assert!(objects(&cases["everything, TLS"], "Pod").is_empty(), "no plaintext test hook under TLS");
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
