fn main() -> std::process::ExitCode {
    bento::cli::main()
}
