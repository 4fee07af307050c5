//! `fleet-worker`: see `fleet_worker::cli`.

fn main() -> std::process::ExitCode {
    fleet_worker::cli::main()
}
