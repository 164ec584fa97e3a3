fn main() {
    std::process::exit(skyform::cli::main());
}
