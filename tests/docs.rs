//! What operators read must match what the binary does: the README documents every
//! flag and metric, and the Grafana dashboard queries only metrics that exist.

use clap::CommandFactory;
use ratelimitd::cli::Cli;
use ratelimitd::metrics;

const README: &str = include_str!("../README.md");
const DASHBOARD: &str = include_str!("../helm/ratelimitd/dashboards/ratelimitd.json");

#[test]
fn the_readme_documents_every_flag_and_metric() {
    for arg in Cli::command().get_arguments() {
        let Some(flag) = arg.get_long() else { continue };
        if ["help", "version"].contains(&flag) {
            continue;
        }
        assert!(README.contains(&format!("`--{flag}`")), "README lacks --{flag}");
    }
    for name in metrics::ALL {
        assert!(README.contains(&format!("`{name}`")), "README lacks {name}");
    }
}

#[test]
fn the_dashboard_queries_only_metrics_ratelimitd_exports() {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("the dashboard is valid JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    let mut queried = 0;
    for panel in panels {
        let title = panel["title"].as_str().expect("every panel has a title");
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for name in metric_names(expr) {
                let base = ["_bucket", "_sum", "_count"].iter().fold(name.as_str(), |n, s| {
                    if metrics::ALL.contains(&n) { n } else { n.strip_suffix(s).unwrap_or(n) }
                });
                assert!(metrics::ALL.contains(&base), "panel {title:?} queries unknown metric {name}");
                queried += 1;
            }
        }
    }
    for name in [metrics::DECISIONS, metrics::THROTTLED_KEY_DENIALS, metrics::CHECK_DURATION, metrics::STORE_UP] {
        assert!(DASHBOARD.contains(name), "the dashboard does not show {name}");
    }
    assert!(queried >= panels.len());
}

fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find("ratelimitd_") {
        let tail = &rest[start..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}
