//! The `/metrics` endpoint: the recorder's metrics and the throttled-keys report, and
//! the task that rotates the report's interval.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::domain::SharedPolicies;
use crate::metrics::Throttled;

/// What `/metrics` shows: the facade's metrics and the throttled-keys report.
#[derive(Clone)]
pub struct Exposition {
    pub handle: PrometheusHandle,
    pub throttled: Arc<Throttled>,
    /// For the aliases of throttled keys.
    pub policies: SharedPolicies,
}

impl Exposition {
    pub fn render(&self) -> String {
        crate::metrics::collect_process();
        let mut text = self.handle.render();
        let policies = self.policies.current();
        self.throttled.render(&mut text, |key| policies.overrides.get(key).and_then(|o| o.alias.clone()));
        text
    }
}

/// Serves `GET /metrics` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    exposition: Exposition,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let route = get(move || {
        let text = exposition.render();
        async move { ([(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text) }
    });
    let app = Router::new().route("/metrics", route);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

/// Rotates the throttled-keys report each interval and drains histogram buffers.
pub async fn report(throttled: Arc<Throttled>, handle: PrometheusHandle) {
    let period = throttled.interval();
    let mut rotate = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut upkeep = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = rotate.tick() => throttled.rotate(),
            _ = upkeep.tick() => handle.run_upkeep(),
        }
    }
}
