//! What operators read must match what the binary does: docs/configuration.md's flag
//! table is generated from the command line (so it cannot drift), docs/operations.md
//! documents every metric, and the Grafana dashboard queries only metrics that exist.
//! After changing a flag, `UPDATE_DOCS=1 cargo test --test docs` rewrites the table.

use clap::CommandFactory;
use ratelimitd::config::cli::Cli;
use ratelimitd::metrics;

const CONFIGURATION: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");
const OPERATIONS: &str = include_str!("../docs/operations.md");
const DASHBOARD: &str = include_str!("../helm/ratelimitd/dashboards/ratelimitd.json");
const BEGIN: &str = "<!-- flags:begin -->\n";
const END: &str = "<!-- flags:end -->";

/// The flag table as clap knows the flags: name, environment variable, default, help.
fn flag_table() -> String {
    let mut table = String::from("| flag | environment | default | what it does |\n|---|---|---|---|\n");
    for arg in Cli::command().get_arguments() {
        let Some(flag) = arg.get_long() else { continue };
        if ["help", "version"].contains(&flag) {
            continue;
        }
        let env = arg.get_env().map(|env| format!("`{}`", env.to_string_lossy())).unwrap_or_default();
        let defaults: Vec<String> = arg.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect();
        let default = if defaults.is_empty() { String::new() } else { format!("`{}`", defaults.join(",")) };
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default().replace('\n', " ").replace('|', "\\|");
        table.push_str(&format!("| `--{flag}` | {env} | {default} | {help} |\n"));
    }
    table
}

#[test]
fn the_flag_table_is_generated_from_the_command_line() {
    let doc = std::fs::read_to_string(CONFIGURATION).expect("docs/configuration.md");
    let (Some(start), Some(end)) = (doc.find(BEGIN), doc.find(END)) else {
        panic!("docs/configuration.md lacks the {BEGIN:?} and {END:?} markers");
    };
    let (before, current, after) = (&doc[..start + BEGIN.len()], &doc[start + BEGIN.len()..end], &doc[end..]);
    let generated = flag_table();
    if current == generated {
        return;
    }
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(CONFIGURATION, format!("{before}{generated}{after}")).expect("rewrite the table");
        return;
    }
    panic!("docs/configuration.md's flag table is out of date: run UPDATE_DOCS=1 cargo test --test docs");
}

#[test]
fn the_docs_document_every_flag_and_metric() {
    let doc = std::fs::read_to_string(CONFIGURATION).expect("docs/configuration.md");
    for arg in Cli::command().get_arguments() {
        let Some(flag) = arg.get_long() else { continue };
        if ["help", "version"].contains(&flag) {
            continue;
        }
        assert!(doc.contains(&format!("`--{flag}`")), "docs/configuration.md lacks --{flag}");
    }
    for name in metrics::ALL {
        assert!(OPERATIONS.contains(&format!("`{name}`")), "docs/operations.md lacks {name}");
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
