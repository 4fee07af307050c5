//! `fleet-bench`: Fleet's benchmark (W1–W4 of the engine issue) and its adapter for
//! the peer benchmark harness (`../shared/peer-bench`), in one binary.
//!
//! ```text
//! fleet-bench run [w1,w1-replicated,w2,w2-cluster,w3,w4,w2-tenants,fairness,dedup,...] [--n 50000] [--best "200 batch=200"]   # prints the figures
//! fleet-bench enqueue <n> <single|bulk> <noop|sleep> [sleep_ms]         # adapter protocol
//! fleet-bench trickle <count> <interval_ms>
//! fleet-bench worker <concurrency> [batch=N]
//! fleet-bench workflow [--n 10000] [--concurrency 200]                # a fan-out/fan-in workflow beside plain jobs
//! fleet-bench version
//! ```
//!
//! Jobs report to the named pipe `PEERS_FIFO` with plain writes, as the peer
//! harness expects; `run` creates the pipe, starts `fleet-bench worker` as a child
//! process (so its peak RSS is the worker's alone) and times the events it reads.
//!
//! ## Layout
//!
//! * `driver`: `fleet-bench run`: each workload (W1–W4, backlogs, recovery, limits,
//!   tenants and fairness, memory, webhooks), timed from the events jobs write to a pipe.
//! * `adapter`: the peer harness's protocol (`enqueue`, `trickle`, `worker`), and the
//!   benchmark's job kinds run by the shipped worker runtime.
//! * `dedup`: the enqueue cost of each dedup mode.
//! * `images`: the 300-photo portfolio and per-step image timings.
//! * `workflows`: a 10,000-step fan-out/fan-in workflow beside as many plain jobs.
//! * `notify`: event → email accepted by a real SMTP server (`scripts/smtp.sh`).

mod adapter;
mod dedup;
mod driver;
mod images;
mod notify;
mod workflows;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // A client enqueueing in a loop gains nothing from a second thread but pays
    // cross-thread wake-ups on every round trip; workers use the multi-threaded runtime.
    let single_client = matches!(args.first().map(String::as_str), Some("enqueue" | "trickle"));
    let rt = if single_client {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().enable_all().build()
    }
    .expect("tokio runtime");
    rt.block_on(async {
        match args.first().map(String::as_str) {
            Some("run") | None => driver::run(&args[1.min(args.len())..]).await,
            Some("image-encode") => images::encode_one(
                args.get(1).map(String::as_str).expect("image-encode <file> <case>"),
                args.get(2).map(String::as_str).unwrap_or("none"),
            ),
            Some("workflow") => workflows::run(&args[1..]).await,
            Some("image-steps") => images::steps(args.get(1).map(String::as_str).expect("image-steps <file>")),
            Some("version") => {
                println!("fleet {} (fleet-jobs Redis engine, apalis-core 1.0)", env!("CARGO_PKG_VERSION"))
            }
            Some(_) => adapter::main(&args).await,
        }
    });
}
