//! `fleet-scheduler`: see `fleet_scheduler::cli`.

fn main() -> std::process::ExitCode {
    fleet_scheduler::cli::main()
}
