//! The `fdm-agent` binary.
fn main() {
    eprintln!("fdm-agent: the daemon is not built yet (see issue 6)");
    std::process::exit(2);
}
