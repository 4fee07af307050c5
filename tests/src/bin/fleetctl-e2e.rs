//! The `fleetctl` command, built inside the test package so tests can run it as a process.

fn main() -> std::process::ExitCode {
    fleet_scheduler::fleetctl::main()
}
