//! Micro-benchmarks of the hot paths: a notify on an id with and without waiting clients, and
//! a waiter registering for a wake-up. `cargo bench` runs them; CI only builds them.

// criterion_group! defines an undocumented public function.
#![allow(missing_docs)]

use std::sync::Arc;

use callhome::auth::{App, AppKey};
use callhome::id::Id;
use callhome::origin::Origin;
use callhome::slot::Slot;
use callhome::store::{Memory, Store};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use futures_util::FutureExt as _;
use tokio_util::sync::CancellationToken;

fn app() -> App {
    App::new(
        "bench",
        &AppKey::new("bench-key".into()),
        vec![Origin::parse("*").unwrap()],
    )
}

fn notify(c: &mut Criterion) {
    let app = app();
    let store = Store::memory(Memory::new(10_000));
    // The memory engine never waits: its futures are ready when first polled.
    let ids: Vec<String> = (0..1_000)
        .map(|_| {
            let created = store.create(&app, None, None).now_or_never().unwrap();
            created.unwrap().id.to_string()
        })
        .collect();
    let mut i = 0;
    c.bench_function("notify, no waiter (store lookup + publish)", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            let published = store.publish(&app, &ids[i], "0123456789abcdef", None, None);
            published.now_or_never().unwrap().unwrap()
        });
    });

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let token = CancellationToken::new();
    c.bench_function("notify, one waiter woken (publish + wake + answer)", |b| {
        b.to_async(&runtime).iter_batched(
            || {
                let slot = Arc::new(Slot::new(Id::generate().unwrap(), Arc::from("bench"), None));
                let waiter = slot.join(8).waiter;
                let token = token.clone();
                let wait = tokio::spawn(async move { waiter.wait_after(0, &token).await });
                (slot, wait)
            },
            |(slot, wait)| async move {
                slot.publish("0123456789abcdef");
                wait.await.unwrap()
            },
            BatchSize::SmallInput,
        );
    });
}

fn wait_registration(c: &mut Criterion) {
    let slot = Arc::new(Slot::new(Id::generate().unwrap(), Arc::from("bench"), None));
    slot.publish("x");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let token = CancellationToken::new();
    // A waiter joins, registers for the wake-up, finds news at once and leaves: the cost every
    // poll pays before it can sleep.
    c.bench_function("wait registration (join + enable + check)", |b| {
        b.to_async(&runtime).iter(|| {
            let slot = Arc::clone(&slot);
            let token = token.clone();
            async move {
                let waiter = slot.join(8).waiter;
                waiter.wait_after(0, &token).await
            }
        });
    });
}

criterion_group!(benches, notify, wait_registration);
criterion_main!(benches);
