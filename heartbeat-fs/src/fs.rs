//! Real file IO for datastore operations (filled in by the heartbeat-fs work).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]
