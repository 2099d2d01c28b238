//! The simulated network: loss, latency, jitter, duplicates and stalls on the way to a host.

use super::*;
use fdm_core::Transmit;

impl World {
    /// A datagram leaves host `h`; it arrives (maybe twice, maybe never) after the network's delay.
    pub(super) fn transmit(&mut self, h: HostId, t: Transmit) {
        self.messages += 1;
        if !self.linked(h, t.to) || self.rng.chance(self.params.net.loss) {
            return;
        }
        let n = &self.params.net;
        let (lat, jit) = (n.latency_us, n.jitter_us);
        let dup = self.rng.chance(n.duplicate);
        let mut d = lat + if jit > 0 { self.rng.below(jit) } else { 0 };
        if n.stall > 0.0 && self.rng.chance(n.stall) {
            d += self.rng.below(n.stall_max_us.max(1));
        }
        if t.payload.get(WIRE_KIND_AT) == Some(&POWER_ON_KIND)
            && let Some(hold) = self.stall_next_command.take()
        {
            d += hold;
        }
        if dup {
            let d2 = lat + if jit > 0 { self.rng.below(jit) } else { 0 };
            self.push(
                self.now + d2,
                Ev::Datagram {
                    to: t.to,
                    payload: t.payload.clone(),
                },
            );
        }
        self.push(
            self.now + d,
            Ev::Datagram {
                to: t.to,
                payload: t.payload,
            },
        );
    }
}
