//! What a key's history holds, read for the support desk (Inspect, Explain): each window's
//! units counted straight from the list of requests, as the oracle counts them.

use super::Limits;

/// One window of a key's policy as its history stands at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowState {
    pub limit: u32,
    pub window_ms: u64,
    /// Units counted in the window.
    pub counted: u64,
    /// Units left (0 if over, as after a lowered limit).
    pub remaining: u64,
    /// When the oldest counted unit leaves the window (Unix ms); 0 if none is counted.
    pub next_free_ms: u64,
    /// When the window holds nothing any more (Unix ms); 0 if it holds nothing now.
    pub empty_ms: u64,
}

/// Each window of `limits` at `now_ms` over `requests` (Unix ms and units, oldest first):
/// a request counts in a window while it is newer than `now_ms` - the window's length.
pub fn windows(requests: &[(u64, u64)], limits: &Limits, now_ms: u64) -> Vec<WindowState> {
    limits
        .windows()
        .iter()
        .map(|window| {
            let w = window.window_ms();
            let inside: Vec<&(u64, u64)> = requests.iter().filter(|(t, _)| t + w > now_ms).collect();
            let counted: u64 = inside.iter().map(|(_, units)| units).sum();
            WindowState {
                limit: window.limit(),
                window_ms: w,
                counted,
                remaining: u64::from(window.limit()).saturating_sub(counted),
                next_free_ms: inside.first().map_or(0, |(t, _)| t + w),
                empty_ms: inside.last().map_or(0, |(t, _)| t + w),
            }
        })
        .collect()
}

/// The requests inside the longest window of `limits` at `now_ms`.
pub fn inside_longest(requests: &[(u64, u64)], limits: &Limits, now_ms: u64) -> Vec<(u64, u64)> {
    requests.iter().copied().filter(|(t, _)| t + limits.longest_ms() > now_ms).collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::Window;

    #[test]
    fn each_window_counts_what_is_inside_it() {
        let minute = Window::new(10, Duration::from_secs(60)).unwrap();
        let second = Window::new(3, Duration::from_secs(1)).unwrap();
        let limits = Limits::new(&[minute, second]).unwrap();
        let requests = [(1_000, 4), (50_000, 2), (60_500, 1), (60_900, 2)];
        let [m, s] = windows(&requests, &limits, 61_000)[..] else { panic!() };
        assert_eq!((m.counted, m.remaining, m.next_free_ms, m.empty_ms), (5, 5, 110_000, 120_900));
        assert_eq!((s.counted, s.remaining, s.next_free_ms, s.empty_ms), (3, 0, 61_500, 61_900));
        assert_eq!(inside_longest(&requests, &limits, 61_000), [(50_000, 2), (60_500, 1), (60_900, 2)]);
        assert_eq!(windows(&[], &limits, 61_000)[0].empty_ms, 0);
    }
}
