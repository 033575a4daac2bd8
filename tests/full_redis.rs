//! Redis full (maxmemory, noeviction) and filled by new key ids, as a client sending
//! random keys could do: keys that already exist keep being decided exactly by Redis
//! (counted in place, the value never grows), and only requests that need room are
//! answered by their failure mode.

mod common;

use clap::Parser;
use common::{TestServer, check, redis_server};
use ratelimitd::config::Config;
use ratelimitd::config::cli::Cli;
use ratelimitd::grpc::pb::Fallback;

#[tokio::test(flavor = "multi_thread")]
async fn a_full_redis_unlocks_no_key() {
    let (_redis, ip) = redis_server(&["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"]).await;
    let url = format!("redis://{ip}:6379");
    let args = ["ratelimitd", "--limit", "50", "--window", "60s", "--redis-url", &url, "--fingerprint-secret", "s"];
    let flags = ["--failure-mode", "local", "--redis-timeout", "2s", "--request-timeout", "10s"];
    let config = Config::from_cli(Cli::try_parse_from(args.iter().chain(&flags)).unwrap()).unwrap();
    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    for _ in 0..40 {
        assert!(check(&mut client, "existing", 1).await.allowed);
    }

    // Fill Redis to its maxmemory: big values, then ever smaller ones, until even a small
    // key is refused. Then lower maxmemory 256 KiB below what Redis uses: right at the limit,
    // the few bytes Redis frees by itself (client buffers it shrinks) would let a key in.
    let mut conn = common::connect(&url).await;
    let mut filled = 0;
    for size in [64 * 1024, 1024, 16] {
        fill(&mut conn, size, &mut filled).await;
    }
    let info: String = redis::cmd("INFO").arg("memory").query_async(&mut conn).await.unwrap();
    let used: u64 = info.lines().find_map(|l| l.strip_prefix("used_memory:")?.trim().parse().ok()).unwrap();
    let () =
        redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(used - 256 * 1024).query_async(&mut conn).await.unwrap();
    let mut new_keys = [0; 2];
    for i in 0..30 {
        let d = check(&mut client, &format!("new-{i}"), 1).await;
        new_keys[usize::from(d.fallback == Fallback::Local as i32)] += 1;
    }
    println!("Redis full after {filled} values; of 30 new key ids, {} answered by the local mode", new_keys[1]);
    assert_eq!(new_keys, [0, 30], "a new key id needs room: its failure mode answers");

    let answers: Vec<(bool, i32)> = {
        let mut answers = Vec::new();
        for _ in 0..20 {
            let d = check(&mut client, "existing", 1).await;
            answers.push((d.allowed, d.fallback));
        }
        answers
    };
    let allowed = answers.iter().filter(|(allowed, _)| *allowed).count();
    assert!(answers.iter().all(|&(_, fallback)| fallback == Fallback::None as i32), "decided by Redis: {answers:?}");
    assert_eq!(allowed, 10, "40 + 10 = the limit of 50, exactly: {answers:?}");
}

/// Writes values of `size` bytes until Redis refuses one (it is full).
async fn fill(conn: &mut redis::aio::MultiplexedConnection, size: usize, filled: &mut usize) {
    let filler = vec![b'x'; size];
    while redis::cmd("SET").arg(format!("filler:{filled}")).arg(&filler).query_async::<()>(conn).await.is_ok() {
        *filled += 1;
        assert!(*filled < 100_000, "Redis never filled up");
    }
}
