//! The tokio runtime around the core (being built, issue 6).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]
