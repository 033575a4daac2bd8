//! `ratelimitd-bench`: drives one or more ratelimitd replicas with concurrent gRPC
//! callers and reports throughput, latency and whether the exactness rule held.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use ratelimitd_bench::keys::KeyDistribution;
use ratelimitd_bench::{LoadOptions, Stop};

#[derive(Debug, Parser)]
#[command(name = "ratelimitd-bench", version, about = "Load generator and exactness checker for ratelimitd.")]
struct Args {
    /// A ratelimitd replica (host:port); repeat for several, callers are spread over them.
    #[arg(long = "target", default_value = "127.0.0.1:50051")]
    targets: Vec<String>,
    /// Concurrent callers (requests in flight in closed loop).
    #[arg(long, default_value_t = 64)]
    callers: usize,
    /// HTTP/2 connections per target.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Load threads, each an event loop over its share of the connections and callers
    /// (at most one per connection); the default is one per core.
    #[arg(long)]
    threads: Option<usize>,
    /// How many distinct keys.
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// How requests pick their key.
    #[arg(long, value_enum, default_value_t = Dist::Uniform)]
    distribution: Dist,
    /// The Zipf exponent, with --distribution zipf.
    #[arg(long, default_value_t = 1.0)]
    zipf_exponent: f64,
    /// Run for this long (e.g. 10s); ignored with --requests.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Stop after this many requests instead of after --duration.
    #[arg(long)]
    requests: Option<u64>,
    /// Open loop at this many requests per second in all; without it, closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Cost of every request.
    #[arg(long, default_value_t = 1)]
    cost: u32,
    /// The window the servers enforce, for the exactness verdict.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    window: Duration,
    /// Key ids are <prefix><index>; the default is fresh for every run.
    #[arg(long)]
    key_prefix: Option<String>,
    /// The Redis the servers use: reports Redis script calls per check (INFO commandstats).
    #[arg(long)]
    redis_url: Option<String>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Dist {
    Uniform,
    Zipf,
    Hot,
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The main thread only starts the load threads and gathers their results.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let distribution = match args.distribution {
        Dist::Uniform => KeyDistribution::Uniform,
        Dist::Zipf => KeyDistribution::Zipf(args.zipf_exponent),
        Dist::Hot => KeyDistribution::Hot,
    };
    let options = LoadOptions {
        targets: args.targets,
        connections: args.connections,
        threads: args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        callers: args.callers,
        keys: args.keys,
        distribution,
        key_prefix: args.key_prefix.unwrap_or_else(|| format!("bench-{:08x}-", rand::random::<u32>())),
        stop: args.requests.map_or(Stop::After(args.duration), Stop::Requests),
        rate: args.rate,
        cost: args.cost,
        window_ms: args.window.as_millis() as u64,
        progress: !args.quiet,
    };
    let before = match &args.redis_url {
        Some(url) => match ratelimitd_bench::script_calls(url).await {
            Ok(calls) => Some(calls),
            Err(e) => return fail(&format!("--redis-url: {e}")),
        },
        None => None,
    };
    let mut report = match ratelimitd_bench::run(&options).await {
        Ok(report) => report,
        Err(e) => return fail(&e.to_string()),
    };
    if let (Some(url), Some(before)) = (&args.redis_url, before) {
        match ratelimitd_bench::script_calls(url).await {
            Ok(after) => report.redis_calls_per_check = Some((after - before) as f64 / report.calls.max(1) as f64),
            Err(e) => return fail(&format!("--redis-url: {e}")),
        }
    }
    let text = if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(json) => json + "\n",
            Err(e) => return fail(&e.to_string()),
        }
    } else {
        report.to_string()
    };
    // `print!` would panic if stdout is closed (a pipe whose reader has gone).
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        return fail(&format!("cannot write the report to stdout: {e}"));
    }
    if report.exactness.holds() && report.errors == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("ratelimitd-bench: error: {message}");
    ExitCode::from(2)
}
