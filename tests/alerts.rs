//! The alert rules shipped with the chart (`helm/ratelimitd/alerts/`): valid for promtool,
//! passing their unit tests (`promtool test rules`), and loaded by a real Prometheus that
//! scrapes a real ratelimitd, where every rule evaluates without error and a Redis that
//! cannot be reached raises `RatelimitdRedisDown`.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::process::Process;
use common::prometheus::{Prometheus, tool};
use common::{free_port, try_check};

const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/helm/ratelimitd/alerts/ratelimitd.rules.yaml");
const RULES_TEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/helm/ratelimitd/alerts/ratelimitd.rules.test.yaml");

fn promtool(args: &[&str]) -> String {
    let out = tool("promtool").args(args).output().expect("run promtool");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn the_rules_pass_promtool_and_their_unit_tests() {
    let checked = promtool(&["check", "rules", RULES]);
    println!("{checked}");
    assert!(checked.contains("SUCCESS: 9 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", RULES_TEST]);
    println!("{tested}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_loads_the_rules_and_alerts_when_redis_is_unreachable() {
    // Nothing listens on this port: every call to Redis fails.
    let url = format!("redis://127.0.0.1:{}", free_port());
    let flags = ["--redis-url", &url, "--redis-timeout", "50ms", "--fingerprint-secret", "alerts"];
    let server = Process::start_logging(&flags, "info");
    let prometheus = Prometheus::start(server.metrics, Some(Path::new(RULES)));
    let mut client = server.client().await;
    let started = Instant::now();
    let (rules, alert) = loop {
        let _ = try_check(&mut client, "k", 1).await;
        let rules = prometheus.query("/api/v1/rules");
        let alerts = prometheus.query("/api/v1/alerts");
        let evaluated: Vec<(String, String)> = rules
            .iter()
            .flat_map(|r| r["data"]["groups"].as_array().cloned().unwrap_or_default())
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .filter(|r| r["lastEvaluation"].as_str().is_some_and(|t| !t.starts_with("0001")))
            .map(|r| {
                (r["name"].as_str().unwrap_or_default().to_owned(), r["health"].as_str().unwrap_or_default().to_owned())
            })
            .collect();
        let down = alerts
            .iter()
            .flat_map(|a| a["data"]["alerts"].as_array().cloned().unwrap_or_default())
            .find(|a| a["labels"]["alertname"] == "RatelimitdRedisDown");
        if let (9, Some(down)) = (evaluated.len(), down) {
            break (evaluated, down);
        }
        assert!(started.elapsed() < Duration::from_secs(60), "rules {evaluated:?}, alerts {alerts:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!("after {:?}: rules {rules:?}; RatelimitdRedisDown {}", started.elapsed(), alert["state"]);
    for (name, health) in &rules {
        assert_eq!(health, "ok", "{name} does not evaluate");
    }
    assert!(["pending", "firing"].contains(&alert["state"].as_str().unwrap_or_default()), "{alert}");
}

/// The Grafana dashboard's queries, as an operator reads them: valid PromQL (promtool checks
/// each as a recording rule, with Grafana's variables filled in), no panel mixing per-second
/// rates with other units (ages, counts), no division that fails while idle, and the top
/// throttled keys shown with their alias.
#[test]
fn the_dashboard_queries_are_valid_and_each_panel_has_one_unit() {
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../helm/ratelimitd/dashboards/ratelimitd.json")).unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for panel in dashboard["panels"].as_array().unwrap() {
        let (id, title) = (&panel["id"], panel["title"].as_str().unwrap());
        let exprs: Vec<&str> =
            panel["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap()).collect();
        let rates = exprs.iter().filter(|e| e.contains("rate(")).count();
        assert!(
            rates == 0 || rates == exprs.len(),
            "panel {title:?} mixes per-second rates with other units: {exprs:?}"
        );
        for (i, expr) in exprs.iter().enumerate() {
            if let Some((_, divisor)) = expr.split_once(" / ") {
                assert!(
                    divisor.starts_with("clamp_min(") || divisor.contains("> 0"),
                    "panel {title:?} divides by zero while idle: {expr}"
                );
            }
            let filled = expr.replace("$job", ".+").replace("$__rate_interval", "1m");
            rules.push_str(&format!(
                "      - record: dashboard:panel_{id}_{i}\n        expr: {}\n",
                serde_json::to_string(&filled).unwrap()
            ));
        }
        if title == "Top throttled keys" {
            assert!(exprs[0].contains("by (key, alias)"), "top keys without their alias: {}", exprs[0]);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard.rules.yaml");
    std::fs::write(&file, rules).unwrap();
    println!("{}", promtool(&["check", "rules", file.to_str().unwrap()]));
}
