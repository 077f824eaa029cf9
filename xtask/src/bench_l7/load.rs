//! The load generators of `bench l7`, run from the lab's client, and what their outputs say:
//! wrk (HTTP/1.1 keep-alive), h2load (HTTP/2 over TLS) and h2load's one request per new TLS
//! connection (full handshakes).

use std::{path::Path, time::Duration};

use anyhow::{Context as _, bail};
use xtask::lab::Lab;

/// Connections each load generator keeps open.
const CONNECTIONS: &str = "64";
/// Client threads (the proxies under test have 2 workers each).
const THREADS: &str = "2";
/// Streams h2load keeps in flight per HTTP/2 connection.
const STREAMS_PER_CONNECTION: &str = "10";
/// New TLS connections per handshake run, all opened at once, one request each.
pub const HANDSHAKE_CONNECTIONS: u32 = 1000;
/// Beyond a run's own length, how long a load generator may take before it is killed.
const GRACE: Duration = Duration::from_secs(30);

/// Requests per second and latency percentiles of one run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throughput {
    pub requests_per_second: f64,
    pub p50: Duration,
    pub p99: Duration,
    /// Requests that got no 2xx/3xx answer, or none at all.
    pub errors: u64,
}

/// `wrk -t2 -c64 -d{seconds}s --latency URL` from the client: HTTP/1.1 with keep-alive.
pub fn wrk(lab: &Lab, url: &str, seconds: u64) -> anyhow::Result<Throughput> {
    let duration = format!("{seconds}s");
    let out = lab
        .run_with_timeout(
            lab.client(),
            &[
                "wrk",
                "-t",
                THREADS,
                "-c",
                CONNECTIONS,
                "-d",
                &duration,
                "--latency",
                url,
            ],
            Duration::from_secs(seconds) + GRACE,
        )
        .context("wrk")?;
    parse_wrk(&out).with_context(|| format!("reading wrk's output:\n{out}"))
}

/// `h2load -c64 -m10 -t2 -D {seconds} URL` from the client: HTTP/2 over TLS (ALPN h2). h2load
/// prints no percentiles, so each request's duration goes to `log_file` and they are computed
/// from it.
pub fn h2load(lab: &Lab, url: &str, seconds: u64, log_file: &Path) -> anyhow::Result<Throughput> {
    let duration = seconds.to_string();
    let log = log_file.to_str().context("log path is not UTF-8")?;
    let out = lab
        .run_with_timeout(
            lab.client(),
            &[
                "h2load",
                "-c",
                CONNECTIONS,
                "-m",
                STREAMS_PER_CONNECTION,
                "-t",
                THREADS,
                "-D",
                &duration,
                "--log-file",
                log,
                url,
            ],
            Duration::from_secs(seconds) + GRACE,
        )
        .context("h2load")?;
    let summary = parse_h2load(&out).with_context(|| format!("reading h2load's output:\n{out}"))?;
    let requests = std::fs::read_to_string(log_file)
        .with_context(|| format!("reading {}", log_file.display()))?;
    let mut durations = parse_h2load_log(&requests)?;
    let (p50, p99) = percentiles(&mut durations).context("h2load logged no request")?;
    Ok(Throughput {
        requests_per_second: summary.requests_per_second,
        p50,
        p99,
        errors: summary.errors,
    })
}

/// Full TLS handshakes per second: `h2load --h1 -c N -n N -t2 URL`, each of its N clients
/// opening one new connection and sending one request on it. Each client's first connection
/// has no session to resume (checked with nginx's `$ssl_session_reused`: all new), whereas
/// h2load and wrk reconnecting after `Connection: close` resume the session they got first,
/// which measures resumption, not handshakes. Returns (handshakes/s, failed requests).
pub fn handshakes(lab: &Lab, url: &str) -> anyhow::Result<(f64, u64)> {
    let n = HANDSHAKE_CONNECTIONS.to_string();
    let out = lab
        .run_with_timeout(
            lab.client(),
            &["h2load", "--h1", "-c", &n, "-n", &n, "-t", THREADS, url],
            GRACE,
        )
        .context("h2load (new connections)")?;
    let summary = parse_h2load(&out).with_context(|| format!("reading h2load's output:\n{out}"))?;
    Ok((summary.requests_per_second, summary.errors))
}

/// `Requests/sec:` and the `--latency` distribution of wrk's output.
fn parse_wrk(out: &str) -> anyhow::Result<Throughput> {
    let field = |prefix: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .map(str::trim)
    };
    let requests_per_second = field("Requests/sec:")
        .context("no `Requests/sec:` line")?
        .parse::<f64>()
        .context("Requests/sec is not a number")?;
    let p50 = parse_wrk_duration(field("50%").context("no 50% line (--latency)")?)?;
    let p99 = parse_wrk_duration(field("99%").context("no 99% line (--latency)")?)?;
    // `Non-2xx or 3xx responses: N` and `Socket errors: connect N, read N, write N, timeout N`
    // appear only when there were some.
    let mut errors = match field("Non-2xx or 3xx responses:") {
        Some(n) => n.parse::<u64>().context("Non-2xx count is not a number")?,
        None => 0,
    };
    if let Some(socket) = field("Socket errors:") {
        for part in socket.split(',') {
            let count = part.trim().rsplit(' ').next().unwrap_or_default();
            errors += count
                .parse::<u64>()
                .with_context(|| format!("socket error count `{part}`"))?;
        }
    }
    Ok(Throughput {
        requests_per_second,
        p50,
        p99,
        errors,
    })
}

/// wrk's durations: `812.00us`, `3.75ms`, `1.02s`, `2.00m`.
fn parse_wrk_duration(text: &str) -> anyhow::Result<Duration> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("duration `{text}` has no unit"))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .with_context(|| format!("duration `{text}`"))?;
    let seconds = match unit {
        "us" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => bail!("duration `{text}` has an unknown unit"),
    };
    Ok(Duration::from_secs_f64(seconds))
}

/// What h2load's summary says.
#[derive(Debug, Clone, Copy, PartialEq)]
struct H2loadSummary {
    requests_per_second: f64,
    /// Failed, errored and timed-out requests, and answers other than 2xx/3xx.
    errors: u64,
}

/// `finished in 10.00s, 12345.67 req/s, ...`, `requests: ...` and `status codes: ...`.
fn parse_h2load(out: &str) -> anyhow::Result<H2loadSummary> {
    let line = |prefix: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .with_context(|| format!("no `{prefix}` line"))
    };
    let requests_per_second = line("finished in ")?
        .split(',')
        .find_map(|part| part.trim().strip_suffix(" req/s"))
        .context("no req/s in the `finished in` line")?
        .parse::<f64>()
        .context("req/s is not a number")?;
    // "requests: 43384 total, 44024 started, 43384 done, 43384 succeeded, 0 failed, ..."
    let counts = |text: &str, names: &[&str]| -> anyhow::Result<u64> {
        let mut sum = 0;
        for part in text.split(',') {
            let mut words = part.split_whitespace();
            if let (Some(n), Some(name)) = (words.next(), words.next())
                && names.contains(&name)
            {
                sum += n
                    .parse::<u64>()
                    .with_context(|| format!("count `{part}`"))?;
            }
        }
        Ok(sum)
    };
    let requests = counts(line("requests: ")?, &["failed", "errored", "timeout"])?;
    let statuses = counts(line("status codes: ")?, &["4xx", "5xx"])?;
    if requests_per_second == 0.0 {
        bail!("no request completed");
    }
    Ok(H2loadSummary {
        requests_per_second,
        errors: requests + statuses,
    })
}

/// The request durations of h2load's `--log-file`: lines of start time (µs since the epoch),
/// status and duration (µs), tab-separated.
fn parse_h2load_log(log: &str) -> anyhow::Result<Vec<Duration>> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let micros = l
                .split('\t')
                .nth(2)
                .with_context(|| format!("h2load log line `{l}` has no duration"))?;
            let micros: u64 = micros
                .trim()
                .parse()
                .with_context(|| format!("h2load log line `{l}`"))?;
            Ok(Duration::from_micros(micros))
        })
        .collect()
}

/// The 50th and 99th percentiles (nearest rank) of `samples`; none when empty.
fn percentiles(samples: &mut [Duration]) -> Option<(Duration, Duration)> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let rank = |p: f64| {
        let index = (p / 100.0 * samples.len() as f64).ceil() as usize;
        samples[index.clamp(1, samples.len()) - 1]
    };
    Some((rank(50.0), rank(99.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 5s test @ http://198.18.1.100/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     5.50ms    6.62ms  48.43ms   89.16%
    Req/Sec     7.71k     7.08k   44.81k    89.90%
  Latency Distribution
     50%  812.00us
     75%    7.83ms
     90%   12.40ms
     99%    1.02s
  77842 requests in 5.11s, 11.14MB read
Requests/sec:  15247.10
Transfer/sec:      2.18MB
";

    #[test]
    fn wrk_output_gives_rate_and_percentiles() {
        let t = parse_wrk(WRK).expect("parses");
        assert_eq!(t.requests_per_second, 15247.10);
        assert_eq!(t.p50, Duration::from_micros(812));
        assert_eq!(t.p99, Duration::from_millis(1020));
        assert_eq!(t.errors, 0);
    }

    #[test]
    fn wrk_errors_add_up_non_2xx_and_socket_errors() {
        let out = WRK.replace(
            "Requests/sec:",
            "  Socket errors: connect 3, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 10\nRequests/sec:",
        );
        assert_eq!(parse_wrk(&out).expect("parses").errors, 16);
    }

    #[test]
    fn wrk_output_without_latency_distribution_is_refused() {
        let out: String = WRK.lines().filter(|l| !l.contains('%')).collect();
        assert!(parse_wrk(&out).is_err());
    }

    const H2LOAD: &str = "finished in 5.01s, 8676.80 req/s, 695.20KB/s
requests: 43384 total, 44024 started, 43384 done, 43380 succeeded, 4 failed, 0 errored, 1 timeout
status codes: 43370 2xx, 0 3xx, 0 4xx, 10 5xx
traffic: 3.39MB (3559408) total, 2.52MB (2646424) headers (space savings 37.76%), 127.10KB (130152) data
";

    #[test]
    fn h2load_summary_gives_rate_and_counts_failures_and_error_statuses() {
        let s = parse_h2load(H2LOAD).expect("parses");
        assert_eq!(s.requests_per_second, 8676.80);
        assert_eq!(s.errors, 4 + 1 + 10);
    }

    #[test]
    fn h2load_run_without_a_completed_request_is_an_error() {
        let out = H2LOAD.replace("8676.80 req/s", "0.00 req/s");
        assert!(parse_h2load(&out).is_err());
    }

    #[test]
    fn h2load_log_durations_give_nearest_rank_percentiles() {
        let log: String = (1..=200)
            .map(|i| format!("1700000000{i:06}\t200\t{}\n", i * 10))
            .collect();
        let mut durations = parse_h2load_log(&log).expect("parses");
        assert_eq!(durations.len(), 200);
        let (p50, p99) = percentiles(&mut durations).expect("samples");
        assert_eq!(p50, Duration::from_micros(1000));
        assert_eq!(p99, Duration::from_micros(1980));
        assert!(percentiles(&mut []).is_none());
    }

    #[test]
    fn wrk_durations_in_every_unit() {
        assert_eq!(
            parse_wrk_duration("2.00m").expect("m"),
            Duration::from_secs(120)
        );
        assert_eq!(
            parse_wrk_duration("3.75ms").expect("ms"),
            Duration::from_micros(3750)
        );
        assert!(parse_wrk_duration("3.75").is_err());
        assert!(parse_wrk_duration("3.75parsecs").is_err());
    }
}
