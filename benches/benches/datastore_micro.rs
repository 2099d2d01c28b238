//! Placeholder: filled in by the datastore_micro work.
fn main() {}
