//! What every role's handlers produce: outputs in the order to carry them out, messages this host
//! sends to itself, datastore requests in flight, and the counters behind the metrics.
//!
//! It lives apart from the role (`Agent { out, role, .. }`) so that a master handler can hold
//! `&mut MasterState` and `&mut Outbox` at once, the split borrow raft-rs makes with `RaftCore`,
//! instead of looking its role up again after every output it queues.

use super::super::events::Event;
use super::super::io::{Output, Transmit};
use super::super::messages::Message;
use super::super::time::Time;
use super::{AgentStats, DsPurpose, Inflight};
use crate::wire::{self, Header, Key, ReplayGuard};
use heartbeat_fs::ops::{DsOp, DsRequest, RequestId};
use heartbeat_fs::{ClusterId, DatastoreId, HostId};
use std::collections::{BTreeMap, VecDeque};

#[derive(Debug)]
pub(super) struct Outbox {
    /// Who sends: fixed for the agent's life (a new incarnation is a new agent).
    pub(super) me: HostId,
    pub(super) cluster: ClusterId,
    pub(super) incarnation: u64,
    pub(super) key: Key,
    pub(super) outputs: VecDeque<Output>,
    /// Messages this host sends to itself (the master is also a host that can be a restart target).
    pub(super) loopback: VecDeque<Message>,
    pub(super) stats: AgentStats,
    wire_seq: u64,
    /// Also the receiving side's replay window: a message names the incarnation of its recipient
    /// as last heard, so sending needs what receiving learned.
    pub(super) replay: ReplayGuard,
    next_request: RequestId,
    next_op: u64,
    pub(super) inflight: BTreeMap<RequestId, Inflight>,
}

impl Outbox {
    pub(super) fn new(me: HostId, cluster: ClusterId, incarnation: u64, key: Key) -> Self {
        Outbox {
            me,
            cluster,
            incarnation,
            key,
            outputs: VecDeque::new(),
            loopback: VecDeque::new(),
            stats: AgentStats::default(),
            wire_seq: 0,
            replay: ReplayGuard::new(),
            next_request: 1,
            next_op: 1,
            inflight: BTreeMap::new(),
        }
    }

    pub(super) fn emit(&mut self, e: Event) {
        self.outputs.push_back(Output::Event(e));
    }

    /// A fresh number for a hypervisor action, which its answer carries back.
    pub(super) fn op(&mut self) -> u64 {
        let op = self.next_op;
        self.next_op += 1;
        op
    }

    pub(super) fn ds_request(
        &mut self,
        now: Time,
        datastore: DatastoreId,
        op: DsOp,
        purpose: DsPurpose,
    ) -> RequestId {
        let id = self.next_request;
        self.next_request += 1;
        self.stats.ds_ops_issued += 1;
        self.inflight.insert(
            id,
            Inflight {
                datastore,
                purpose,
                issued: now,
            },
        );
        self.outputs
            .push_back(Output::Datastore(DsRequest { id, datastore, op }));
        id
    }

    /// Whether a request of this kind is in flight for the datastore.
    pub(super) fn has_inflight(&self, ds: DatastoreId, pred: impl Fn(&DsPurpose) -> bool) -> bool {
        self.inflight
            .values()
            .any(|f| f.datastore == ds && pred(&f.purpose))
    }

    pub(super) fn send(&mut self, to: HostId, msg: &Message) {
        if to == self.me {
            self.loopback.push_back(msg.clone());
            return;
        }
        let body = match postcard::to_stdvec(msg) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "message does not encode");
                return;
            }
        };
        self.wire_seq += 1;
        let header = Header {
            kind: msg.kind(),
            cluster: self.cluster,
            sender: self.me,
            incarnation: self.incarnation,
            recipient: to,
            recipient_incarnation: self.replay.incarnation_of(to).unwrap_or(0),
            sequence: self.wire_seq,
        };
        match wire::seal(&self.key, &header, &body) {
            Ok(payload) => {
                self.stats.datagrams_sent += 1;
                self.outputs
                    .push_back(Output::Transmit(Transmit { to, payload }));
            }
            Err(e) => {
                tracing::error!(error = %e, kind = msg.kind(), "message too large for a datagram")
            }
        }
    }
}
