//! Store-level comparison, in one run and alternating: ratelimitd's Redis store
//! (through its `Limiter`, deny cache off: key string in, decision out), batched as
//! the service runs it and with one check per script call, against
//! Limitador's `AsyncRateLimiter` on its async Redis storage, with the same
//! callers, keys, limit and Redis.
//!
//! Scenarios: throughput and latency over many keys; one key hit by many callers
//! at once (does the check admit more than the limit?); one key over several
//! fixed-window boundaries (how many in any sliding window?).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use hdrhistogram::Histogram;
use limitador::AsyncRateLimiter;
use limitador::limit::{Context, Limit};
use limitador::storage::redis::AsyncRedisStorage;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use ratelimitd::domain::Limiter;
use ratelimitd::domain::oracle::{Record, audit};
use ratelimitd::domain::{Fingerprinter, Policies, Policy, SharedPolicies};
use ratelimitd::metrics::{ThrottleOptions, Throttled};
use ratelimitd::store::redis::{RedisEndpoint, RedisOptions, RedisStore};

#[derive(Debug, Parser)]
struct Args {
    /// A Redis started for benchmarking (never a shared one).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    #[arg(long, default_value_t = 64)]
    callers: usize,
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    #[arg(long, default_value_t = 300)]
    limit: u32,
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    window: Duration,
    /// Length of each throughput round; rounds alternate between the two.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    round: Duration,
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// The most checks per script call in our store (ratelimitd's --redis-batch default);
    /// each round also runs our store with one check per call.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Redis connections of our store (ratelimitd's default: one per core).
    #[arg(long, default_value_t = std::thread::available_parallelism().map_or(1, |n| n.get()))]
    connections: usize,
    /// The systems each round runs, in order: ours (batched), ours-batch-1, limitador.
    #[arg(long, value_delimiter = ',', default_value = "ours,ours-batch-1,limitador")]
    systems: Vec<Which>,
    /// The pid of the Redis server (as seen from here): each round then reports the CPU time
    /// Redis and this process used per check, which is what the throughput ratio is made of
    /// when the two fill the machine.
    #[arg(long)]
    redis_pid: Option<u32>,
    /// Run the throughput rounds only, not the two exactness scenarios after them.
    #[arg(long)]
    throughput_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Which {
    Ours,
    #[value(name = "ours-batch-1")]
    OursBatch1,
    Limitador,
}

type Check<'a> = Pin<Box<dyn Future<Output = Result<(bool, Option<u64>), String>> + Send + 'a>>;

/// One rate limiter under test: answers (allowed, decided-at ms if it says).
trait System: Send + Sync {
    fn name(&self) -> &'static str;
    fn check<'a>(&'a self, key_id: &'a str) -> Check<'a>;
}

struct Ours {
    limiter: Limiter<RedisStore>,
    name: &'static str,
}

impl System for Ours {
    fn name(&self) -> &'static str {
        self.name
    }
    fn check<'a>(&'a self, key_id: &'a str) -> Check<'a> {
        Box::pin(async move {
            let d = self.limiter.check_and_consume(key_id, 1).await.map_err(|e| e.to_string())?.decision;
            Ok((d.allowed, Some(d.decided_at_ms)))
        })
    }
}

struct Limitador {
    limiter: AsyncRateLimiter,
    namespace: limitador::limit::Namespace,
}

impl System for Limitador {
    fn name(&self) -> &'static str {
        "limitador"
    }
    fn check<'a>(&'a self, key_id: &'a str) -> Check<'a> {
        Box::pin(async move {
            let values = HashMap::from([("key".to_owned(), key_id.to_owned())]);
            let ctx: Context = values.into();
            let result = self
                .limiter
                .check_rate_limited_and_update(&self.namespace, &ctx, 1)
                .await
                .map_err(|e| e.to_string())?;
            Ok((!result.limited, None))
        })
    }
}

/// Our store; `batch` is the most checks per script call (1: one call per check).
async fn ours(args: &Args, limit: u32, window: Duration, prefix: &str, batch: usize) -> Arc<dyn System> {
    let options = RedisOptions {
        endpoint: RedisEndpoint::Url(args.redis_url.clone()),
        key_prefix: prefix.to_owned(),
        previous_layout: false,
        timeout: Duration::from_secs(2),
        longest_wait: Duration::from_secs(2),
        connections: args.connections,
        batch,
        tls: None,
        password: None,
    };
    let store = RedisStore::new(options).expect("valid Redis URL");
    store.ping().await.expect("Redis answers");
    let policies = SharedPolicies::new(Policies::uniform(Policy::default_with(limit, window).expect("valid policy")));
    let throttled = Arc::new(Throttled::new(ThrottleOptions {
        top_k: 20,
        interval: Duration::from_secs(60),
        near_limit_fraction: 0.8,
    }));
    let limiter = Limiter::new(store, policies, Fingerprinter::new(b"compare"), throttled);
    Arc::new(Ours { limiter, name: if batch == 1 { "ratelimitd, batch 1" } else { "ratelimitd" } })
}

async fn limitador(args: &Args, limit: u32, window: Duration, namespace: &str) -> Arc<dyn System> {
    let storage = AsyncRedisStorage::new(&args.redis_url).await.expect("Limitador connects to Redis");
    let limiter = AsyncRateLimiter::new_with_storage(Box::new(storage));
    let variable = "key".try_into().expect("a valid CEL variable");
    limiter.add_limit(Limit::new(namespace, u64::from(limit), window.as_secs(), vec![], vec![variable]));
    Arc::new(Limitador { limiter, namespace: namespace.into() })
}

struct Outcome {
    calls: u64,
    errors: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
    by_key: HashMap<usize, Vec<Record>>,
}

/// `callers` tasks call `system` until `stop` (a deadline, or a number of calls),
/// picking keys uniformly from `keys`.
async fn drive(system: Arc<dyn System>, callers: usize, keys: usize, prefix: &str, stop: StopAt) -> Outcome {
    let key_ids: Arc<[String]> = (0..keys).map(|i| format!("{prefix}{i}")).collect();
    let issued = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let (system, key_ids, issued) = (system.clone(), key_ids.clone(), issued.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = SmallRng::from_rng(&mut rand::rng());
            let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut records = Vec::new();
            let mut errors = 0;
            loop {
                match stop {
                    StopAt::Deadline(d) if start.elapsed() >= d => break,
                    StopAt::Calls(n) if issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= n => break,
                    _ => {}
                }
                let key = rng.random_range(0..key_ids.len());
                let sent = Instant::now();
                let answer = system.check(&key_ids[key]).await;
                latency.saturating_record(sent.elapsed().as_micros().max(1) as u64);
                match answer {
                    Ok((allowed, at)) => {
                        records.push((key, Record { allowed, cost: 1, at_ms: at.unwrap_or_else(now_ms) }))
                    }
                    Err(_) => errors += 1,
                }
            }
            (latency, records, errors)
        }));
    }
    let mut outcome = Outcome {
        calls: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).unwrap(),
        by_key: HashMap::new(),
    };
    for task in tasks {
        let (latency, records, errors) = task.await.expect("caller");
        outcome.latency_us.add(&latency).unwrap();
        outcome.errors += errors;
        outcome.calls += records.len() as u64 + errors;
        for (key, record) in records {
            outcome.by_key.entry(key).or_default().push(record);
        }
    }
    outcome.elapsed = start.elapsed();
    outcome
}

#[derive(Clone, Copy)]
enum StopAt {
    Deadline(Duration),
    Calls(u64),
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// (allowed, the most allowed for one key in any window)
fn admitted(outcome: &Outcome, limit: u32, window: Duration) -> (usize, u64) {
    let window_ms = window.as_millis() as u64;
    let verdicts = outcome.by_key.values().map(|records| audit(records, limit, window_ms));
    verdicts.fold((0, 0), |(allowed, worst), v| (allowed + v.allowed, worst.max(v.max_in_window)))
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// CPU time (user + system) process `pid` has used so far, from `/proc/<pid>/stat`, whose
/// times are in USER_HZ ticks (100 per second on Linux).
fn cpu_time(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// CPU time used so far by this process and by Redis (when its pid was given).
fn cpu_now(redis_pid: Option<u32>) -> (Option<Duration>, Option<Duration>) {
    (cpu_time("self"), redis_pid.and_then(|pid| cpu_time(&pid.to_string())))
}

/// µs of CPU per check between two readings, or "-".
fn per_check(before: Option<Duration>, after: Option<Duration>, checks: u64) -> String {
    match (before, after) {
        (Some(b), Some(a)) if checks > 0 => format!("{:.1}", (a - b).as_secs_f64() * 1e6 / checks as f64),
        _ => "-".into(),
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Some(pid) = args.redis_pid
        && cpu_time(&pid.to_string()).is_none()
    {
        eprintln!("store-compare: --redis-pid {pid}: cannot read /proc/{pid}/stat (no such process here?)");
        std::process::exit(2);
    }
    let run = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    println!(
        "# store level: {} callers, {} keys uniform, limit {} per {:?}, {} rounds of {:?} each, alternating",
        args.callers, args.keys, args.limit, args.window, args.rounds, args.round
    );
    println!(
        "| round | system | checks/s | p50 ms | p99 ms | p99.9 ms | max ms | errors | allowed | max in any window (limit {}) | CPU µs per check: this process / Redis |",
        args.limit
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for round in 0..args.rounds {
        for (i, &which) in args.systems.iter().enumerate() {
            let tag = format!("cmp-{run}-r{round}-{i}");
            let system = match which {
                Which::Ours => ours(&args, args.limit, args.window, &format!("{tag}:"), args.batch).await,
                Which::OursBatch1 => ours(&args, args.limit, args.window, &format!("{tag}:"), 1).await,
                Which::Limitador => limitador(&args, args.limit, args.window, &tag).await,
            };
            let name = system.name();
            let (own, redis) = cpu_now(args.redis_pid);
            let o = drive(system, args.callers, args.keys, "key-", StopAt::Deadline(args.round)).await;
            let (own_after, redis_after) = cpu_now(args.redis_pid);
            let (allowed, worst) = admitted(&o, args.limit, args.window);
            let l = &o.latency_us;
            println!(
                "| {} | {name} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {allowed} | {worst} | {} / {} |",
                round + 1,
                o.calls as f64 / o.elapsed.as_secs_f64(),
                ms(l.value_at_quantile(0.5)),
                ms(l.value_at_quantile(0.99)),
                ms(l.value_at_quantile(0.999)),
                ms(l.max()),
                o.errors,
                per_check(own, own_after, o.calls),
                per_check(redis, redis_after, o.calls),
            );
        }
    }

    if args.throughput_only {
        return;
    }
    println!(
        "\n# one key, 1000 checks, {} in flight, limit {} per {:?}: how many are admitted?",
        args.callers, args.limit, args.window
    );
    println!("| try | ratelimitd allowed | limitador allowed |");
    println!("|---|---|---|");
    for attempt in 1..=3 {
        let tag = format!("hot-{run}-{attempt}");
        let mut row = Vec::new();
        for which in 0..2 {
            let system = if which == 0 {
                ours(&args, args.limit, args.window, &format!("{tag}:"), args.batch).await
            } else {
                limitador(&args, args.limit, args.window, &tag).await
            };
            let o = drive(system, args.callers, 1, "hot", StopAt::Calls(1000)).await;
            row.push(admitted(&o, args.limit, args.window).0);
        }
        println!("| {attempt} | {} | {} |", row[0], row[1]);
    }

    let (limit, window) = (args.limit, Duration::from_secs(2));
    println!(
        "\n# one key, {} callers for 7 s, limit {limit} per {window:?}: most admitted in any sliding {window:?}",
        args.callers
    );
    println!("| system | allowed | max in any {window:?} window |");
    println!("|---|---|---|");
    for which in 0..2 {
        let tag = format!("edge-{run}-{which}");
        let system = if which == 0 {
            ours(&args, limit, window, &format!("{tag}:"), args.batch).await
        } else {
            limitador(&args, limit, window, &tag).await
        };
        let name = system.name();
        let o = drive(system, args.callers, 1, "edge", StopAt::Deadline(Duration::from_secs(7))).await;
        let (allowed, worst) = admitted(&o, limit, window);
        println!("| {name} | {allowed} | {worst} |");
    }
    println!(
        "\n(ratelimitd windows are measured on decided_at_ms, Redis's clock; Limitador reports no decision time, so its are measured on this process's clock at each answer.)"
    );
}
