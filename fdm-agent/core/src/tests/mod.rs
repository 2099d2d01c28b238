//! Behaviour tests of the agent core, stepped by hand with a fake clock.

mod behaviours;
mod failover;
mod harness;
mod limits;
mod random;
mod returning;
mod storage;
