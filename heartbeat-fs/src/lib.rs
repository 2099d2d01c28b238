//! heartbeat-fs: everything fdm keeps on a shared datastore.
//!
//! Two halves. The pure half (`ids`, `records`, `codec`, `ops`, `claim`) defines every on-disk record,
//! its exact byte layout, the closed set of operations an agent can ask of a datastore and the one
//! claim rule every backend applies; it does no IO and is used by the agent core and the simulator
//! alike. The IO half (`fs`) runs those operations on real files under `<datastore>/.fdm/`:
//! positioned writes with `sync_data`, atomic replace for lists, uncached reads, the claim lock, and a
//! deadline on every call so that a hung datastore never blocks the caller; `mem` runs the same
//! operations on values, for tests and the simulator. The layout is documented byte by byte in
//! `docs/formats.md`.

pub mod claim;
pub mod codec;
pub mod fs;
pub mod ids;
pub mod mem;
pub mod ops;
pub mod records;

pub use ids::{ClusterId, DatastoreId, Epoch, HostId, VmId};
