//! The request-framing guard's cost: every HTTP/1 byte a client sends is read through it.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lb_agent::proxy::framing::FramingGuard;
use tokio::io::AsyncReadExt;

/// Reads `stream` through a guard (or straight, to compare) in hyper's read size.
fn read_all(stream: &[u8], guarded: bool, runtime: &tokio::runtime::Runtime) -> usize {
    runtime.block_on(async {
        let mut buf = vec![0u8; 8192];
        let mut total = 0;
        if guarded {
            let mut guard = FramingGuard::new(stream, 16 * 1024);
            while let Ok(n @ 1..) = guard.read(&mut buf).await {
                total += n;
            }
        } else {
            let mut plain = stream;
            while let Ok(n @ 1..) = plain.read(&mut buf).await {
                total += n;
            }
        }
        total
    })
}

fn guard(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let request = "GET /api/v1/items?id=42 HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: bench\r\n\
Accept: */*\r\nAccept-Encoding: gzip\r\nCookie: session=0123456789abcdef\r\n\r\n";
    let pipelined = request.repeat(1000);
    let upload = format!(
        "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{}",
        1 << 20,
        "x".repeat(1 << 20)
    );
    for (name, stream) in [
        ("1000 pipelined GETs", &pipelined),
        ("1 MiB upload", &upload),
    ] {
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Bytes(stream.len() as u64));
        for guarded in [false, true] {
            let label = if guarded { "guarded" } else { "plain" };
            group.bench_function(label, |b| {
                b.iter(|| read_all(black_box(stream.as_bytes()), guarded, &runtime))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, guard);
criterion_main!(benches);
