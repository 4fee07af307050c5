//! `fleetctl`: see `fleet_scheduler::fleetctl`.

fn main() -> std::process::ExitCode {
    fleet_scheduler::fleetctl::main()
}
