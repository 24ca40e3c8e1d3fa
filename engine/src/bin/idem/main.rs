//! The `idem` command-line tool (being written: `idem demo`, `idem bench`).
fn main() {
    eprintln!("idem: the command-line tool is not written yet");
    std::process::exit(2);
}
