//! The `ahv` command (see the `ahv_cli` library).

fn main() -> std::process::ExitCode {
    ahv_cli::main()
}
