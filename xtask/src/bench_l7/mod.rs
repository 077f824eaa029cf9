//! `cargo xtask bench l7`: our L7 proxy beside HAProxy and nginx, configured alike
//! (`proxies`), in one lab and one run: requests/s and p50/p99 latency with wrk (HTTP/1.1
//! keep-alive) and h2load (HTTP/2 over TLS), and full TLS handshakes/s (`load`).

mod load;
mod proxies;

use std::time::{Duration, Instant};

use anyhow::Context as _;
use load::Throughput;
use proxies::{Configs, Proxy};
use xtask::lab::{Lab, LabSpec, VIP4};

use crate::demo;

/// Seconds each wrk and h2load run lasts.
const RUN_SECONDS: u64 = 10;
/// Seconds of unmeasured wrk load each proxy gets after it starts (its pools, caches and
/// health checks settle; the same for every proxy).
const WARM_UP_SECONDS: u64 = 2;
/// Rounds over all proxies, alternating (each round in another order), so drift on this shared
/// machine hits all alike; the summary takes each figure's median over them, so disturbed
/// rounds (they happen here: a proxy's rate moves by 10-20% from one round to the next) do
/// not decide it. Five: with three, the medians of two proxies at parity came out up to 10%
/// apart either way.
const ROUNDS: usize = 5;

/// What one proxy did in one round.
#[derive(Debug, Clone, Copy)]
struct Figures {
    wrk: Throughput,
    h2load: Throughput,
    handshakes_per_second: f64,
    /// Failed requests of the handshake run.
    handshake_errors: u64,
}

pub fn l7() -> anyhow::Result<()> {
    let started = Instant::now();
    // A build that fails is ours failing: the peers are still measured.
    let agent_binary = demo::build_agent().map_err(|e| format!("building lb-agent: {e:#}"));
    let lab = Lab::up(LabSpec {
        name: Lab::unique_name("bl7"),
        backends: 2,
        router: None,
    })?;
    let dir = lab.log_dir().to_owned();
    let cert = proxies::make_certificate(&dir)?;
    let targets: Vec<_> = lab.backends().iter().map(|b| b.v4).collect();
    for b in lab.backends() {
        let config = dir.join(format!("target-{}.conf", b.role));
        std::fs::write(&config, proxies::target_nginx_config(&dir, &b.role))?;
        let config = config.to_str().context("lab directory is not UTF-8")?;
        let prefix = dir.to_str().context("lab directory is not UTF-8")?;
        lab.spawn(b, &["nginx", "-c", config, "-p", prefix])?;
    }
    for b in lab.backends() {
        lab.wait_tcp_listening(b, proxies::TARGET_PORT, Duration::from_secs(10))?;
    }
    let configs = Configs {
        agent_binary,
        agent: dir.join("bench-agent.toml"),
        haproxy: dir.join("bench-haproxy.cfg"),
        nginx: dir.join("bench-nginx.conf"),
        dir: dir.clone(),
    };
    std::fs::write(&configs.agent, proxies::agent_config(&targets, &cert))?;
    std::fs::write(&configs.haproxy, proxies::haproxy_config(&targets, &cert))?;
    std::fs::write(&configs.nginx, proxies::nginx_config(&dir, &targets, &cert))?;

    // The targets' ceiling: one of them, straight from the client. The proxies spread the
    // load over two, so a proxy far below twice this is not held back by its targets.
    let direct_url = format!("http://{}:{}/", targets[0], proxies::TARGET_PORT);
    let direct = load::wrk(&lab, &direct_url, RUN_SECONDS).context("wrk straight to b1")?;
    println!(
        "one target straight from the client (wrk): {:.0} req/s, p50 {}, p99 {}",
        direct.requests_per_second,
        ms(direct.p50),
        ms(direct.p99)
    );

    let mut results: Vec<(Proxy, Result<Figures, String>)> = Vec::new();
    for round in 1..=ROUNDS {
        for proxy in round_order(round) {
            let figures = turn(&lab, proxy, &configs, round).map_err(|e| format!("{e:#}"));
            match &figures {
                Ok(f) => println!(
                    "round {round} {:<8} wrk {:>8.0} req/s p50 {} p99 {} | h2load {:>8.0} req/s p50 {} p99 {} | {:>6.0} handshakes/s{}",
                    proxy.name(),
                    f.wrk.requests_per_second,
                    ms(f.wrk.p50),
                    ms(f.wrk.p99),
                    f.h2load.requests_per_second,
                    ms(f.h2load.p50),
                    ms(f.h2load.p99),
                    f.handshakes_per_second,
                    errors_note(f),
                ),
                Err(e) => println!("round {round} {:<8} failed: {e}", proxy.name()),
            }
            results.push((proxy, figures));
        }
    }
    print_summary(&results);
    drop(lab);
    println!(
        "bench l7 took {:.0} s after the build",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The order of the proxies in `round` (from 1): rotated each round, so that none always goes
/// first (the machine drifts within a round as much as between them).
fn round_order(round: usize) -> [Proxy; 3] {
    let mut order = Proxy::ALL;
    let turns = (round - 1) % order.len();
    order.rotate_left(turns);
    order
}

/// One proxy's turn: start it, run the three loads, stop it (also when a load fails).
fn turn(lab: &Lab, proxy: Proxy, configs: &Configs, round: usize) -> anyhow::Result<Figures> {
    let running = proxies::start(lab, proxy, configs)?;
    let measured = (|| -> anyhow::Result<Figures> {
        proxies::check_added_headers(lab, proxy)?;
        load::wrk(lab, &format!("http://{VIP4}/"), WARM_UP_SECONDS).context("warm-up")?;
        let wrk = load::wrk(lab, &format!("http://{VIP4}/"), RUN_SECONDS)?;
        let log = configs
            .dir
            .join(format!("h2load-{}-{round}.log", proxy.name()));
        let h2load = load::h2load(lab, &format!("https://{VIP4}/"), RUN_SECONDS, &log)?;
        let (handshakes_per_second, handshake_errors) =
            load::handshakes(lab, &format!("https://{VIP4}/"))?;
        Ok(Figures {
            wrk,
            h2load,
            handshakes_per_second,
            handshake_errors,
        })
    })();
    let stopped = proxies::stop(lab, running);
    let figures = measured?;
    stopped?;
    Ok(figures)
}

/// Medians over the rounds per proxy, and ours beside HAProxy's.
fn print_summary(results: &[(Proxy, Result<Figures, String>)]) {
    println!(
        "\nmedian of {ROUNDS} rounds, same lab, same run; wrk -t2 -c64 -d{RUN_SECONDS}s (HTTP/1.1 keep-alive), \
         h2load -c64 -m10 -t2 -D {RUN_SECONDS} (h2 over TLS), new TLS connections: h2load --h1, {} clients x 1 request; \
         every proxy behind an XDP program on the node's NIC (ours, or the lab's pass program for the peers)",
        load::HANDSHAKE_CONNECTIONS
    );
    println!(
        "{:<8} {:>10} {:>9} {:>9} {:>10} {:>9} {:>9} {:>12}",
        "proxy", "wrk req/s", "p50", "p99", "h2 req/s", "p50", "p99", "handshakes/s"
    );
    let mut medians = Vec::new();
    for proxy in Proxy::ALL {
        let runs: Vec<&Figures> = results
            .iter()
            .filter(|(p, _)| *p == proxy)
            .filter_map(|(_, r)| r.as_ref().ok())
            .collect();
        let failures: Vec<&String> = results
            .iter()
            .filter(|(p, _)| *p == proxy)
            .filter_map(|(_, r)| r.as_ref().err())
            .collect();
        let Some(median) = median_of(&runs) else {
            // The first line: the per-round lines above have the rest.
            let why = failures
                .first()
                .and_then(|s| s.lines().next())
                .unwrap_or("no run");
            println!("{:<8} failed: {why}", proxy.name());
            continue;
        };
        println!(
            "{:<8} {:>10.0} {:>9} {:>9} {:>10.0} {:>9} {:>9} {:>12.0}{}",
            proxy.name(),
            median.wrk.requests_per_second,
            ms(median.wrk.p50),
            ms(median.wrk.p99),
            median.h2load.requests_per_second,
            ms(median.h2load.p50),
            ms(median.h2load.p99),
            median.handshakes_per_second,
            if failures.is_empty() {
                String::new()
            } else {
                format!("  ({} of {ROUNDS} rounds failed)", failures.len())
            }
        );
        medians.push((proxy, median));
    }
    let of = |proxy| medians.iter().find(|(p, _)| *p == proxy).map(|(_, m)| *m);
    match (of(Proxy::Ours), of(Proxy::Haproxy)) {
        (Some(ours), Some(haproxy)) => {
            let ratio = |a: f64, b: f64| a / b;
            println!(
                "ours/haproxy: wrk req/s {:.2}, p99 {:.2}; h2load req/s {:.2}, p99 {:.2}; handshakes/s {:.2} \
                 (goal: req/s >= 1, p99 <= 1)",
                ratio(
                    ours.wrk.requests_per_second,
                    haproxy.wrk.requests_per_second
                ),
                ratio(ours.wrk.p99.as_secs_f64(), haproxy.wrk.p99.as_secs_f64()),
                ratio(
                    ours.h2load.requests_per_second,
                    haproxy.h2load.requests_per_second
                ),
                ratio(
                    ours.h2load.p99.as_secs_f64(),
                    haproxy.h2load.p99.as_secs_f64()
                ),
                ratio(ours.handshakes_per_second, haproxy.handshakes_per_second),
            );
        }
        (None, _) => println!("ours/haproxy: no figures for ours"),
        (_, None) => println!("ours/haproxy: no figures for haproxy"),
    }
}

/// The median of each figure over `runs` (of an even number: the mean of the middle two);
/// none when there are none. Error counts are summed.
fn median_of(runs: &[&Figures]) -> Option<Figures> {
    if runs.is_empty() {
        return None;
    }
    let median = |f: &dyn Fn(&Figures) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(|r| f(r)).collect();
        values.sort_by(f64::total_cmp);
        let middle = values.len() / 2;
        if values.len() % 2 == 1 {
            values[middle]
        } else {
            (values[middle - 1] + values[middle]) / 2.0
        }
    };
    let throughput = |pick: &dyn Fn(&Figures) -> Throughput| Throughput {
        requests_per_second: median(&|r| pick(r).requests_per_second),
        p50: Duration::from_secs_f64(median(&|r| pick(r).p50.as_secs_f64())),
        p99: Duration::from_secs_f64(median(&|r| pick(r).p99.as_secs_f64())),
        errors: runs.iter().map(|r| pick(r).errors).sum(),
    };
    Some(Figures {
        wrk: throughput(&|r| r.wrk),
        h2load: throughput(&|r| r.h2load),
        handshakes_per_second: median(&|r| r.handshakes_per_second),
        handshake_errors: runs.iter().map(|r| r.handshake_errors).sum(),
    })
}

/// `  (errors: wrk N, h2load N, handshakes N)` when any run had some.
fn errors_note(f: &Figures) -> String {
    if f.wrk.errors + f.h2load.errors + f.handshake_errors == 0 {
        return String::new();
    }
    format!(
        "  (errors: wrk {}, h2load {}, handshakes {})",
        f.wrk.errors, f.h2load.errors, f.handshake_errors
    )
}

/// A duration in milliseconds, e.g. `3.75ms`.
fn ms(d: Duration) -> String {
    format!("{:.2}ms", d.as_secs_f64() * 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(rate: f64, p99_ms: u64) -> Figures {
        let t = Throughput {
            requests_per_second: rate,
            p50: Duration::from_millis(1),
            p99: Duration::from_millis(p99_ms),
            errors: 1,
        };
        Figures {
            wrk: t,
            h2load: t,
            handshakes_per_second: rate / 10.0,
            handshake_errors: 0,
        }
    }

    #[test]
    fn each_proxy_goes_first_in_turn_and_every_round_has_all() {
        for round in 1..=ROUNDS {
            let expected = Proxy::ALL[(round - 1) % Proxy::ALL.len()];
            assert_eq!(round_order(round)[0], expected, "round {round}");
        }
        for round in 1..=ROUNDS {
            let mut order = round_order(round).map(Proxy::name);
            order.sort_unstable();
            assert_eq!(order, ["haproxy", "nginx", "ours"]);
        }
    }

    #[test]
    fn the_summary_takes_each_figures_median_so_one_disturbed_round_does_not_decide() {
        let rounds = [
            figures(30_000.0, 5),
            figures(20_000.0, 50),
            figures(32_000.0, 4),
        ];
        let median = median_of(&rounds.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!(median.wrk.requests_per_second, 30_000.0);
        assert_eq!(median.h2load.p99, Duration::from_millis(5));
        assert_eq!(median.handshakes_per_second, 3_000.0);
        assert_eq!(median.wrk.errors, 3, "errors are summed");

        let two = [figures(30_000.0, 4), figures(20_000.0, 6)];
        let median = median_of(&two.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!(median.wrk.requests_per_second, 25_000.0);
        assert_eq!(median.wrk.p99, Duration::from_millis(5));
        assert!(median_of(&[]).is_none());
    }
}
