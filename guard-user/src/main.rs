//! The `rpz-guard` command line.
fn main() {
    println!("rpz-guard");
}
