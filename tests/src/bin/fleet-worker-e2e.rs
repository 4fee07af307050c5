//! The `fleet-worker` command, built inside the test package so end-to-end tests can
//! start it as a process (`CARGO_BIN_EXE_fleet-worker-e2e`): the same code as the
//! shipped binary.

fn main() -> std::process::ExitCode {
    fleet_worker::cli::main()
}
