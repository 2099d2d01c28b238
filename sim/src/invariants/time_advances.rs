//! Virtual time advances: the run never processes more than `MAX_EVENTS_AT_ONE_INSTANT` events at
//! one instant (a core timer that re-fires at the same instant forever). Checked by the world's
//! event loop, which then stops the run instead of spinning.

pub const NAME: &str = "time_advances";

/// More events than this at one virtual instant is a spin, not a busy moment.
pub const MAX_EVENTS_AT_ONE_INSTANT: u32 = 200_000;

/// The violation's detail, naming the last event processed.
pub fn detail(events: u32, last: &dyn std::fmt::Debug) -> String {
    format!("{} events at one instant; last {last:?}", events)
}
