//! `fleet-scheduler`: see `fleet_scheduler::cli`.

fn main() -> std::process::ExitCode {
    eprintln!("fleet-scheduler: the schedule runner and HTTP API are being built; nothing to run yet");
    std::process::ExitCode::from(2)
}
