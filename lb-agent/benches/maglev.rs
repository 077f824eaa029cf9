//! Maglev table build time: the agent rebuilds a group's table on every target change.

use criterion::{Criterion, criterion_group, criterion_main};
use lb_agent::maglev::{MaglevTable, MaglevTarget};

fn build(c: &mut Criterion) {
    for n in [100usize, 1000] {
        let keys: Vec<String> = (0..n)
            .map(|i| format!("198.18.{}.{}:8080", i / 250, i % 250 + 1))
            .collect();
        let targets: Vec<MaglevTarget<'_>> = keys
            .iter()
            .map(|k| MaglevTarget {
                key: k.as_bytes(),
                weight: 1,
            })
            .collect();
        c.bench_function(&format!("maglev build {n} targets, 65537 slots"), |b| {
            b.iter(|| MaglevTable::build(std::hint::black_box(&targets), 65537))
        });
    }
}

criterion_group!(benches, build);
criterion_main!(benches);
