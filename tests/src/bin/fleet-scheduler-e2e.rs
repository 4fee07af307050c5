//! The `fleet-scheduler` command, built inside the test package so tests can run its
//! subcommands (e.g. `reseal-secrets`) as a process.

fn main() -> std::process::ExitCode {
    fleet_scheduler::cli::main()
}
