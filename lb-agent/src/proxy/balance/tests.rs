use std::{net::SocketAddr, sync::Arc};

use super::*;

fn address(i: usize) -> SocketAddr {
    SocketAddr::from(([198, 18, 2, u8::try_from(i + 2).unwrap()], 8080))
}

fn target(i: usize, weight: u32) -> ServingTarget {
    ServingTarget {
        address: address(i),
        weight,
        load: TargetLoad::new(),
        token: format!("token-{i}").into(),
        authority: address(i).to_string().parse().unwrap(),
    }
}

fn group(algorithm: Algorithm, weights: &[u32]) -> GroupTargets {
    GroupTargets::new(
        algorithm,
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| target(i, w))
            .collect(),
    )
}

fn index_of(group: &GroupTargets, picked: &ServingTarget) -> usize {
    group
        .targets()
        .iter()
        .position(|t| t.address == picked.address)
        .unwrap()
}

/// The targets of `picks` picks, as indices.
fn picks(group: &GroupTargets, picks: usize) -> Vec<usize> {
    (0..picks)
        .map(|_| index_of(group, group.pick().unwrap()))
        .collect()
}

fn counts(indices: &[usize], targets: usize) -> Vec<usize> {
    let mut counts = vec![0; targets];
    for &i in indices {
        counts[i] += 1;
    }
    counts
}

/// The longest run of one target in `indices`.
fn longest_run(indices: &[usize], target: usize) -> usize {
    indices
        .split(|&i| i != target)
        .map(<[usize]>::len)
        .max()
        .unwrap_or(0)
}

#[test]
fn round_robin_splits_equal_weights_evenly() {
    let g = group(Algorithm::RoundRobin, &[1, 1]);
    let p = picks(&g, 10_000);
    assert_eq!(counts(&p, 2), [5_000, 5_000]);
    // Strict alternation.
    assert!(p.windows(2).all(|w| w[0] != w[1]), "{:?}", &p[..10]);
}

#[test]
fn round_robin_splits_three_to_one_and_interleaves() {
    let g = group(Algorithm::RoundRobin, &[3, 1]);
    let p = picks(&g, 10_000);
    assert_eq!(counts(&p, 2), [7_500, 2_500]);
    assert_eq!(longest_run(&p, 1), 1, "the weight-1 target twice in a row");
    // Each cycle of 4 has one turn of the light target, so the heavy one runs at most 3.
    assert!(longest_run(&p, 0) <= 3);
}

#[test]
fn round_robin_spreads_turns_instead_of_bunching_them() {
    // Weights 3 and 2: a b a b a, never a a a.
    let g = group(Algorithm::RoundRobin, &[3, 2]);
    let p = picks(&g, 10_000);
    assert_eq!(counts(&p, 2), [6_000, 4_000]);
    assert_eq!(longest_run(&p, 0), 2);
    assert_eq!(longest_run(&p, 1), 1);
}

#[test]
fn round_robin_gives_each_weight_its_exact_share_per_cycle() {
    let rows: &[&[u32]] = &[
        &[1],
        &[5, 5, 1],
        &[1000, 1, 999],
        &[2, 4, 6, 8],
        &[7, 3, 11, 13, 1000],
        &[1000, 999, 998, 997, 996, 995, 994, 993],
    ];
    for weights in rows {
        let g = group(Algorithm::RoundRobin, weights);
        let total: u32 = weights.iter().sum();
        let gcd = weights.iter().fold(0, |a, &b| super::gcd(a, u64::from(b)));
        assert!(
            matches!(g.cycle, Cycle::Sequence(_)),
            "{weights:?} should fit a cycle"
        );
        // Two whole cycles from wherever the cursor starts.
        let cycle = (u64::from(total) / gcd) as usize;
        let c = counts(&picks(&g, 2 * cycle), weights.len());
        let want: Vec<usize> = weights
            .iter()
            .map(|&w| 2 * (u64::from(w) / gcd) as usize)
            .collect();
        assert_eq!(c, want, "{weights:?}");
    }
}

#[test]
fn round_robin_over_a_long_cycle_still_splits_by_weight() {
    // 20 targets of co-prime-ish weights: the cycle would be far past MAX_CYCLE.
    let weights: Vec<u32> = (0..20).map(|i| 1000 - 37 * i).collect();
    let g = group(Algorithm::RoundRobin, &weights);
    assert!(matches!(g.cycle, Cycle::Spread(_)));
    let total: u32 = weights.iter().sum();
    let n = 1 << 16;
    let c = counts(&picks(&g, n), weights.len());
    for (i, (&got, &w)) in c.iter().zip(&weights).enumerate() {
        let want = n as f64 * f64::from(w) / f64::from(total);
        // Van der Corput: within one pick per target of the exact share over 2^k turns, plus
        // one for the window not starting on a 2^16 boundary.
        assert!(
            (got as f64 - want).abs() <= 2.0,
            "target {i}: {got} picks, want {want:.1}"
        );
    }
}

#[test]
fn round_robin_never_picks_a_weight_zero_target() {
    for algorithm in [Algorithm::RoundRobin, Algorithm::LeastOutstandingRequests] {
        let g = group(algorithm, &[0, 2, 0, 1]);
        let c = counts(&picks(&g, 3_000), 4);
        assert_eq!((c[0], c[2]), (0, 0), "{algorithm:?}: {c:?}");
    }
}

#[test]
fn empty_group_or_all_weights_zero_picks_none() {
    for algorithm in [Algorithm::RoundRobin, Algorithm::LeastOutstandingRequests] {
        let empty = GroupTargets::new(algorithm, Vec::new());
        assert!(empty.is_empty());
        assert!(empty.pick().is_none());
        let zero = group(algorithm, &[0, 0]);
        assert!(!zero.is_empty());
        assert!(zero.pick().is_none(), "{algorithm:?}");
    }
}

#[test]
fn least_outstanding_prefers_the_idle_target_while_one_is_busy() {
    let g = group(Algorithm::LeastOutstandingRequests, &[1, 1]);
    let busy = &g.targets()[0];
    let guards: Vec<Outstanding> = (0..3).map(|_| busy.load.start()).collect();
    assert_eq!(busy.load.outstanding(), 3);
    for _ in 0..100 {
        assert_eq!(index_of(&g, g.pick().unwrap()), 1);
    }
    drop(guards);
    assert_eq!(busy.load.outstanding(), 0);
    // Both idle again: they share.
    assert_eq!(counts(&picks(&g, 1_000), 2), [500, 500]);
}

#[test]
fn least_outstanding_balances_requests_held_open() {
    // Every pick holds its request open: the in-progress counts climb together.
    let g = group(Algorithm::LeastOutstandingRequests, &[1, 1, 1]);
    let guards: Vec<Outstanding> = (0..300).map(|_| g.pick().unwrap().load.start()).collect();
    let held: Vec<u32> = g.targets().iter().map(|t| t.load.outstanding()).collect();
    assert_eq!(held, [100, 100, 100]);
    drop(guards);
    assert!(g.targets().iter().all(|t| t.load.outstanding() == 0));
}

#[test]
fn least_outstanding_divides_by_weight() {
    // Weight 2 carries twice the requests in progress of weight 1.
    let g = group(Algorithm::LeastOutstandingRequests, &[2, 1]);
    let _guards: Vec<Outstanding> = (0..300).map(|_| g.pick().unwrap().load.start()).collect();
    let held: Vec<u32> = g.targets().iter().map(|t| t.load.outstanding()).collect();
    assert_eq!(held, [200, 100]);
}

#[test]
fn by_token_finds_the_target_and_misses_an_unknown_token() {
    let g = group(Algorithm::RoundRobin, &[1, 1, 1, 0, 5]);
    for (i, t) in g.targets().iter().enumerate() {
        let found = g.by_token(&format!("token-{i}")).unwrap();
        assert_eq!(found.address, t.address);
    }
    assert!(g.by_token("token-9").is_none());
    assert!(g.by_token("").is_none());
    assert!(
        GroupTargets::new(Algorithm::RoundRobin, Vec::new())
            .by_token("token-0")
            .is_none()
    );
}

#[test]
fn registry_keeps_loads_across_builds_and_forgets_targets_gone() {
    let mut registry = LoadRegistry::new();
    let first = {
        let mut build = registry.build();
        let a = build.load("web", address(0));
        let b = build.load("web", address(1));
        let same = build.load("web", address(0));
        assert!(Arc::ptr_eq(&a, &same));
        // Another group: its own load for the same address.
        assert!(!Arc::ptr_eq(&a, &build.load("api", address(0))));
        (a, b)
    };
    assert_eq!(registry.len(), 3);
    let guard = first.0.start();

    // The next plan no longer has target 1 nor group api.
    let again = registry.build().load("web", address(0));
    assert!(Arc::ptr_eq(&again, &first.0), "load survives the rebuild");
    assert_eq!(
        again.outstanding(),
        1,
        "a request started under the old plan counts"
    );
    drop(guard);
    assert_eq!(again.outstanding(), 0);
    assert_eq!(registry.len(), 1);

    // Target 1 comes back: a fresh load, not the forgotten one.
    let back = registry.build().load("web", address(1));
    assert!(!Arc::ptr_eq(&back, &first.1));
    assert_eq!(
        registry.len(),
        1,
        "target 0 was not asked for by that build"
    );
}

#[test]
fn requests_in_flight_are_counted_on_targets_the_plans_no_longer_serve_until_they_end() {
    let mut registry = LoadRegistry::new();
    let in_flight = registry.in_flight();
    let load = registry.build().load("web", address(1));
    let first = load.start();
    let second = load.start();
    assert_eq!(in_flight.requests("web", address(1)), 2);
    assert_eq!(in_flight.requests("api", address(1)), 0, "per group");
    // Deregistered: the next plan serves only target 0; the old plan is gone too.
    drop(registry.build().load("web", address(0)));
    drop(load);
    assert_eq!(
        in_flight.requests("web", address(1)),
        2,
        "its requests still run"
    );
    drop(first);
    assert_eq!(in_flight.requests("web", address(1)), 1);
    drop(second);
    assert_eq!(in_flight.requests("web", address(1)), 0);
    // Once the last request ended, nothing of it is kept.
    drop(registry.build().load("web", address(0)));
    assert_eq!(in_flight.requests("web", address(1)), 0);
}
