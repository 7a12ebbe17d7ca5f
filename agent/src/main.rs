fn main() -> std::process::ExitCode {
    bento_agent::cli::main()
}
