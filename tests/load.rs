//! The load test: three replicas on one Redis under 64 closed-loop callers for 20 s,
//! Zipf-distributed keys (a few hot keys served by the deny cache, a long tail
//! served by Redis). Every decision is checked against the exactness rule.

mod common;

use std::time::Duration;

use common::{Backend, TestServer};
use ratelimitd_bench::keys::KeyDistribution;
use ratelimitd_bench::{LoadOptions, Stop};

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_under_load_make_no_errors_and_stay_exact() {
    let backend = Backend::redis().await;
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(TestServer::start(backend.config(50, "2s")).await);
    }
    for server in &servers {
        server.client().await;
    }
    let options = LoadOptions {
        targets: servers.iter().map(|s| s.addr.to_string()).collect(),
        connections: 2,
        threads: 2,
        callers: 64,
        keys: 200,
        distribution: KeyDistribution::Zipf(1.0),
        key_prefix: "load-".into(),
        stop: Stop::After(Duration::from_secs(20)),
        rate: None,
        cost: 1,
        window_ms: 2_000,
        progress: false,
    };
    let report = ratelimitd_bench::run(&options).await.expect("the load generator runs");
    print!("{report}");
    assert_eq!(report.errors, 0, "first error: {:?}", report.first_error);
    assert!(report.calls > 1_000, "too little load to mean anything: {}", report.calls);
    let e = &report.exactness;
    assert!(e.holds(), "exactness broken: {e:?}");
    assert_eq!((e.worst_max_in_window, e.worst_limit), (50, 50), "the hot keys must be saturated: {e:?}");
}
