//! A key's history read in Rust, for the support desk (Inspect, Explain): the layout that
//! `lua/sliding_window.lua` writes (docs/design.md#redis-layout), decoded as its `read()`
//! decodes it. Only the script writes it.

/// Bytes of the header, and the one format this release writes.
const HEADER: usize = 40;
const FORMAT: u8 = 2;
/// Running counts are kept modulo 2^24.
const CUM: u64 = 1 << 24;

/// The requests the value of a history key holds at `now_ms` (Redis's clock), oldest first, as
/// (Unix ms, units), requests of one millisecond added up; nothing for no value or one that
/// has expired.
pub fn requests(value: &[u8], now_ms: u64) -> Result<Vec<(u64, u64)>, String> {
    if value.is_empty() {
        return Ok(Vec::new());
    }
    let uint = |at: usize, bytes: usize| -> u64 {
        value[at..at + bytes].iter().rev().fold(0, |n, &b| (n << 8) | u64::from(b))
    };
    let not_ours = || "it does not hold a format 2 ratelimitd history".to_owned();
    if value.len() < HEADER || value[0] != FORMAT {
        return Err(not_ours());
    }
    let (t, k) = (usize::from(value[1]), usize::from(value[2]));
    let (capacity, head, n) = (uint(3, 4) as usize, uint(7, 4) as usize, uint(11, 4) as usize);
    let (newest, expires, base) = (uint(15, 6), uint(27, 6), uint(33, 3));
    let width = t + k;
    if !matches!((t, k), (3, 0) | (5, 0) | (5, 3)) || n > capacity || value.len() < HEADER + capacity * width {
        return Err(not_ours());
    }
    if n == 0 || now_ms >= expires {
        return Ok(Vec::new());
    }
    let modulo = 1u64 << (8 * t);
    let mut requests: Vec<(u64, u64)> = Vec::with_capacity(n);
    let mut through = base;
    for j in 0..n {
        let at = HEADER + ((head + j) % capacity) * width;
        let stamp = uint(at, t);
        let time = newest - ((newest % modulo + modulo - stamp) % modulo);
        let units = if k == 0 {
            1
        } else {
            let cum = uint(at + t, 3);
            let units = (cum + CUM - through) % CUM;
            through = cum;
            units
        };
        match requests.last_mut() {
            Some(last) if last.0 == time => last.1 += units,
            _ => requests.push((time, units)),
        }
    }
    Ok(requests)
}
