//! The load generator behind `ratelimitd-bench`: concurrent gRPC callers against one
//! or more ratelimitd replicas, closed loop (as fast as answers come) or open loop
//! (a fixed schedule, latency measured from each request's intended send time, so a
//! stall is not hidden by coordinated omission), with latencies in an HDR histogram
//! and the exactness rule checked per key from every response.

pub mod keys;
mod report;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use keys::{KeyDistribution, KeyPicker};
use ratelimitd::domain::oracle::{self, Record};
use ratelimitd::grpc::pb::CheckAndConsumeRequest;
use ratelimitd::grpc::pb::rate_limiter_client::RateLimiterClient;
pub use report::{Exactness, Latency, Report};

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// `host:port` of each ratelimitd replica; callers are spread over them.
    pub targets: Vec<String>,
    /// HTTP/2 connections per target.
    pub connections: usize,
    /// Threads, each an event loop over its share of the connections and callers.
    pub threads: usize,
    pub callers: usize,
    pub keys: usize,
    pub distribution: KeyDistribution,
    /// Key ids are `<prefix><index>`.
    pub key_prefix: String,
    pub stop: Stop,
    /// Open loop at this many requests per second in all; `None` is closed loop.
    pub rate: Option<f64>,
    pub cost: u32,
    /// The window the servers enforce, for the exactness verdict.
    pub window_ms: u64,
    /// Print progress to stderr every second.
    pub progress: bool,
}

#[derive(Debug, Clone, Copy)]
pub enum Stop {
    After(Duration),
    Requests(u64),
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("cannot connect to {target}: {error}")]
    Connect { target: String, error: String },
    #[error("{0}")]
    Options(String),
}

/// What one caller saw.
struct CallerResult {
    latency_us: Histogram<u64>,
    records: Vec<(u32, u32, Record)>,
    errors: u64,
    first_error: Option<String>,
}

/// Counters shared by the callers and the progress printer.
#[derive(Default)]
struct Progress {
    issued: AtomicU64,
    completed: AtomicU64,
    errors: AtomicU64,
}

pub async fn run(options: &LoadOptions) -> Result<Report, BenchError> {
    if options.callers == 0 || options.targets.is_empty() || options.connections == 0 || options.threads == 0 {
        return Err(BenchError::Options("need at least one target, connection, caller and thread".into()));
    }
    if options.rate.is_some_and(|rate| !(rate.is_finite() && rate > 0.0)) {
        return Err(BenchError::Options("--rate must be a positive number of requests per second".into()));
    }
    let picker = KeyPicker::new(options.distribution, options.keys).map_err(BenchError::Options)?;
    let key_ids: Arc<[String]> = (0..options.keys.max(1)).map(|i| format!("{}{i}", options.key_prefix)).collect();
    let targets = targets(options)?;
    // Each thread runs its own event loop over its own connections and callers: a
    // connection's requests and answers are batched into few writes, and the
    // generator's cost per call stays small next to the service it measures.
    let threads = options.threads.min(targets.len()).min(options.callers);
    let progress = Arc::new(Progress::default());
    let (ready, mut readies) = tokio::sync::mpsc::channel(threads);
    let (go, gone) = tokio::sync::watch::channel(None);
    let mut groups = Vec::with_capacity(threads);
    for thread in 0..threads {
        let group = Group {
            thread,
            threads,
            targets: targets.iter().skip(thread).step_by(threads).cloned().collect(),
            picker: picker.clone(),
            key_ids: key_ids.clone(),
            progress: progress.clone(),
            options: options.clone(),
        };
        let (ready, gone) = (ready.clone(), gone.clone());
        let (done, results) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("bench-{thread}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
                let outcome = match runtime {
                    Ok(runtime) => runtime.block_on(group.run(ready, gone)),
                    Err(e) => Err(BenchError::Options(format!("cannot start a runtime: {e}"))),
                };
                let _ = done.send(outcome);
            })
            .map_err(|e| BenchError::Options(format!("cannot start a thread: {e}")))?;
        groups.push(results);
    }
    drop(ready);
    // Every thread connects first; the clock starts when all are ready. If one cannot
    // connect, returning drops `go`, and the others end without calling.
    for _ in 0..threads {
        match readies.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(e),
            None => return Err(BenchError::Options("a load thread stopped".into())),
        }
    }
    let start = Instant::now();
    let cpu_before = process_cpu_seconds();
    let _ = go.send(Some(start));
    let printer = options.progress.then(|| tokio::spawn(print_progress(progress.clone(), start)));
    let mut results = Vec::with_capacity(options.callers);
    let mut failed = None;
    for group in groups {
        match group.await {
            Ok(Ok(group)) => results.extend(group),
            Ok(Err(e)) => failed = failed.or(Some(e)),
            Err(_) => failed = failed.or(Some(BenchError::Options("a load thread stopped".into()))),
        }
    }
    let elapsed = start.elapsed();
    if let Some(printer) = printer {
        printer.abort();
    }
    match failed {
        Some(e) => Err(e),
        None => {
            let mut report = summarise(options, results, elapsed);
            if let (Some(before), Some(after)) = (cpu_before, process_cpu_seconds()) {
                report.generator_cpu_us_per_call = Some((after - before) * 1e6 / report.calls.max(1) as f64);
            }
            Ok(report)
        }
    }
}

/// Every connection to open: each target's URI, once per connection.
fn targets(options: &LoadOptions) -> Result<Vec<(String, Endpoint)>, BenchError> {
    let mut endpoints = Vec::new();
    for _ in 0..options.connections {
        for target in &options.targets {
            let uri = if target.contains("://") { target.clone() } else { format!("http://{target}") };
            let endpoint = Endpoint::from_shared(uri)
                .map_err(|e| BenchError::Connect { target: target.clone(), error: e.to_string() })?
                .tcp_nodelay(true);
            endpoints.push((target.clone(), endpoint));
        }
    }
    Ok(endpoints)
}

/// One thread's share: its connections, and the callers `thread`, `thread + threads`, ...
struct Group {
    thread: usize,
    threads: usize,
    targets: Vec<(String, Endpoint)>,
    picker: KeyPicker,
    key_ids: Arc<[String]>,
    progress: Arc<Progress>,
    options: LoadOptions,
}

impl Group {
    async fn run(
        self,
        ready: tokio::sync::mpsc::Sender<Result<(), BenchError>>,
        mut go: tokio::sync::watch::Receiver<Option<Instant>>,
    ) -> Result<Vec<CallerResult>, BenchError> {
        let mut channels = Vec::with_capacity(self.targets.len());
        for (target, endpoint) in &self.targets {
            match endpoint.connect().await {
                Ok(channel) => channels.push(channel),
                Err(e) => {
                    let error = || BenchError::Connect { target: target.clone(), error: e.to_string() };
                    let _ = ready.send(Err(error())).await;
                    return Err(error());
                }
            }
        }
        let _ = ready.send(Ok(())).await;
        let start = match go.wait_for(Option::is_some).await {
            Ok(start) => start.unwrap_or_else(Instant::now),
            Err(_) => return Ok(Vec::new()),
        };
        let mut callers = Vec::new();
        for (n, id) in (self.thread..self.options.callers).step_by(self.threads).enumerate() {
            let caller = Caller {
                id,
                client: RateLimiterClient::new(channels[n % channels.len()].clone()),
                picker: self.picker.clone(),
                key_ids: self.key_ids.clone(),
                progress: self.progress.clone(),
                options: self.options.clone(),
                start,
            };
            callers.push(tokio::spawn(caller.run()));
        }
        let mut results = Vec::with_capacity(callers.len());
        for caller in callers {
            results.push(caller.await.map_err(|e| BenchError::Options(format!("a caller failed: {e}")))?);
        }
        Ok(results)
    }
}

struct Caller {
    id: usize,
    client: RateLimiterClient<Channel>,
    picker: KeyPicker,
    key_ids: Arc<[String]>,
    progress: Arc<Progress>,
    options: LoadOptions,
    start: Instant,
}

impl Caller {
    async fn run(mut self) -> CallerResult {
        let mut rng = SmallRng::seed_from_u64(0x5eed + self.id as u64);
        let mut result = CallerResult {
            latency_us: Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant histogram bounds are valid"),
            records: Vec::new(),
            errors: 0,
            first_error: None,
        };
        // Open loop: this caller's share of the rate, its sends staggered among the others'.
        let period = self.options.rate.map(|rate| Duration::from_secs_f64(self.options.callers as f64 / rate));
        let offset = period.map_or(Duration::ZERO, |p| p.mul_f64(self.id as f64 / self.options.callers as f64));
        for n in 0u64.. {
            let intended = match period {
                Some(period) => self.start + offset + period.mul_f64(n as f64),
                None => Instant::now(),
            };
            if self.done(intended) {
                break;
            }
            if period.is_some() {
                tokio::time::sleep_until(intended).await;
            }
            let key = self.picker.pick(&mut rng);
            let request = CheckAndConsumeRequest { key_id: self.key_ids[key].clone(), cost: self.options.cost };
            let answer = self.client.check_and_consume(request).await;
            let latency = intended.elapsed().as_micros() as u64;
            result.latency_us.saturating_record(latency.max(1));
            match answer {
                Ok(response) => {
                    let d = response.into_inner();
                    let record = Record { allowed: d.allowed, cost: self.options.cost.max(1), at_ms: d.decided_at_ms };
                    result.records.push((key as u32, d.limit, record));
                }
                Err(status) => {
                    result.errors += 1;
                    self.progress.errors.fetch_add(1, Ordering::Relaxed);
                    result.first_error.get_or_insert_with(|| format!("{:?}: {}", status.code(), status.message()));
                }
            }
            self.progress.completed.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn done(&self, intended: Instant) -> bool {
        match self.options.stop {
            Stop::After(duration) => intended >= self.start + duration,
            Stop::Requests(limit) => self.progress.issued.fetch_add(1, Ordering::Relaxed) >= limit,
        }
    }
}

async fn print_progress(progress: Arc<Progress>, start: Instant) {
    let mut tick = tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    let mut last = 0;
    loop {
        tick.tick().await;
        let completed = progress.completed.load(Ordering::Relaxed);
        let errors = progress.errors.load(Ordering::Relaxed);
        eprintln!(
            "ratelimitd-bench: {:>5.1} s  {completed} calls  {}/s  {errors} errors",
            start.elapsed().as_secs_f64(),
            completed - last
        );
        last = completed;
    }
}

/// This process's CPU time so far, user and system, from `/proc/self/stat` (Linux;
/// `None` elsewhere). Its clock ticks are USER_HZ, 100 per second on Linux.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name (which may hold spaces) start at the state, field 3.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |field: usize| fields.get(field - 3)?.parse::<u64>().ok();
    Some((ticks(14)? + ticks(15)?) as f64 / 100.0)
}

fn summarise(options: &LoadOptions, results: Vec<CallerResult>, elapsed: Duration) -> Report {
    let mut latency =
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("constant histogram bounds are valid");
    let mut by_key: HashMap<u32, (u32, Vec<Record>)> = HashMap::new();
    let (mut errors, mut first_error) = (0, None);
    for result in results {
        let _ = latency.add(&result.latency_us);
        errors += result.errors;
        first_error = first_error.or(result.first_error);
        for (key, limit, record) in result.records {
            let entry = by_key.entry(key).or_insert_with(|| (limit, Vec::new()));
            entry.0 = limit;
            entry.1.push(record);
        }
    }
    let audits: Vec<_> =
        by_key.values().map(|(limit, records)| (*limit, oracle::audit(records, *limit, options.window_ms))).collect();
    Report::new(options, elapsed, &latency, errors, first_error, &audits)
}

/// EVALSHA plus EVAL calls Redis has served (INFO commandstats).
pub async fn script_calls(url: &str) -> Result<u64, redis::RedisError> {
    command_calls(url, &["evalsha", "eval"]).await
}

/// Calls of the named commands (lower case) Redis has served, those run by scripts
/// included (INFO commandstats).
pub async fn command_calls(url: &str, commands: &[&str]) -> Result<u64, redis::RedisError> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut conn).await?;
    let calls = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix("cmdstat_")?.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|rest| rest.split(['=', ',']).nth(1))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(commands.iter().map(|name| calls(name)).sum())
}
