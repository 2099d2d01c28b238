//! Placeholder: filled in by the wire_micro work.
fn main() {}
