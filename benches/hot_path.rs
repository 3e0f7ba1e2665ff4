//! Criterion benchmarks of the pieces of the gateway check: path normalisation, route
//! matching, and signature verification (what the verified-token cache saves on a hit).
//!
//! `cargo bench --bench hot_path`

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use usher::config;
use usher::routes::{normalize_path, RouteMap};
use usher::tokens::Tokens;

fn route_map() -> RouteMap {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/gateway-config/routes.toml"
    ))
    .unwrap_or_default();
    let builtin = usher::permissions::builtin_names();
    match RouteMap::parse(&text, &builtin) {
        Ok(map) => map,
        Err(e) => panic!("the example route map does not load: {e}"),
    }
}

fn paths(c: &mut Criterion) {
    c.bench_function("normalize_path: already normal", |b| {
        b.iter(|| normalize_path(black_box("/api/v1/films/42/stream?quality=hd")))
    });
    c.bench_function("normalize_path: dot segments and //", |b| {
        b.iter(|| normalize_path(black_box("/api//v1/films/./42/../43/stream?x=1")))
    });
    c.bench_function("normalize_path: encoded traversal", |b| {
        b.iter(|| normalize_path(black_box("/api/v1/films/%2e%2e//admin/./users")))
    });
}

fn routes(c: &mut Criterion) {
    let map = route_map();
    c.bench_function("RouteMap::decide: stream route", |b| {
        b.iter(|| {
            map.decide(
                black_box(Some("cinema.example")),
                black_box("GET"),
                black_box("/api/v1/films/42/stream"),
            )
            .map(|d| d.route.len())
        })
    });
    c.bench_function("RouteMap::decide: default policy", |b| {
        b.iter(|| {
            map.decide(None, black_box("POST"), black_box("/nowhere/at/all"))
                .map(|d| d.route.len())
        })
    });
}

fn tokens(c: &mut Criterion) {
    for algorithm in [config::Algorithm::EdDSA, config::Algorithm::HS256] {
        let cfg = config::Tokens {
            algorithm,
            ..config::Tokens::default()
        };
        let tokens = match Tokens::ephemeral(&cfg) {
            Ok(t) => t,
            Err(e) => panic!("no key: {e}"),
        };
        let token = match tokens.issue(
            uuid::Uuid::new_v4(),
            uuid::Uuid::new_v4(),
            vec!["user".into()],
            0,
        ) {
            Ok((t, _)) => t,
            Err(e) => panic!("no token: {e}"),
        };
        c.bench_function(
            &format!("Tokens::verify {algorithm:?} (a cache miss)"),
            |b| b.iter(|| tokens.verify(black_box(&token)).is_ok()),
        );
    }
}

criterion_group!(benches, paths, routes, tokens);
criterion_main!(benches);
