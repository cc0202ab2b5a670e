//! What the fan-out clients received, per value: latency from the moment the value was
//! made (a commit, or a baseline tick) to each client, and the spread from the first
//! client to the last.

use std::collections::HashMap;
use std::time::Instant;

use super::clients::Client;
use super::{percentile, print_latencies};

pub struct Rounds {
    /// Per delivery: ms from the value's making to the client decoding it.
    pub latency: Vec<f64>,
    /// Per value: ms from its first client to its last.
    pub spread: Vec<f64>,
    /// Clients that got the final value.
    pub complete: usize,
    pub delivered: usize,
    /// (ms to the last client, ms to the first, value number), slowest first.
    pub slowest: Vec<(f64, f64, i64)>,
    /// The longest message any client received, in bytes.
    pub longest: usize,
}

impl Rounds {
    /// Value `base + i` was made at `made_at[i - 1]`; the final one is `base + made_at.len()`.
    pub fn of(received: &[Client], base: i64, made_at: &[Instant]) -> Rounds {
        let target = base + made_at.len() as i64;
        let made =
            |n: i64| -> Option<&Instant> { made_at.get(usize::try_from(n - base - 1).ok()?) };
        let mut latency = Vec::with_capacity(received.len() * made_at.len());
        let (mut complete, mut delivered) = (0, 0);
        let mut first_last: HashMap<i64, (Instant, Instant)> = HashMap::new();
        for client in received {
            if client.got.last().is_some_and(|(n, _)| *n >= target) {
                complete += 1;
            }
            for &(n, at) in &client.got {
                let Some(made) = made(n) else { continue };
                delivered += 1;
                latency.push(ms(made, &at));
                let e = first_last.entry(n).or_insert((at, at));
                e.0 = e.0.min(at);
                e.1 = e.1.max(at);
            }
        }
        let spread = first_last.values().map(|(a, b)| ms(a, b)).collect();
        let mut slowest: Vec<(f64, f64, i64)> = first_last
            .iter()
            .filter_map(|(n, (first, last))| {
                let made = made(*n)?;
                Some((ms(made, last), ms(made, first), n - base))
            })
            .collect();
        slowest.sort_by(|a, b| b.0.total_cmp(&a.0));
        Rounds {
            longest: received.iter().map(|c| c.longest).max().unwrap_or(0),
            latency,
            spread,
            complete,
            delivered,
            slowest,
        }
    }

    pub fn p99(&self) -> f64 {
        sorted_percentile(&self.latency, 0.99)
    }

    pub fn spread_p50(&self) -> f64 {
        sorted_percentile(&self.spread, 0.50)
    }

    /// Prints the latency and spread lines, and the slowest values.
    pub fn print(&self, made: &str) {
        println!("  messages up to {} bytes", self.longest);
        print_latencies(&format!("{made}-to-client"), self.latency.clone());
        print_latencies(
            "first-to-last client per value (fan-out spread)",
            self.spread.clone(),
        );
        // A p99 over all deliveries is one whole value's worth of them (10,000 of
        // 1,000,000): one slow value sets it. Name the slowest, by their last client.
        println!(
            "  slowest values ({made} to last client, to first): {}",
            self.slowest
                .iter()
                .take(5)
                .map(|(last, first, i)| format!("#{i} {last:.0} ms ({first:.0})"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

fn ms(from: &Instant, to: &Instant) -> f64 {
    to.saturating_duration_since(*from).as_secs_f64() * 1e3
}

fn sorted_percentile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    percentile(&v, p)
}
