//! The `ferry` binary: everything lives in [`ferry::cli`] so it can be tested as a library.

fn main() -> std::process::ExitCode {
    ferry::cli::main()
}
