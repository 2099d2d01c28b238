//! election: who should be master, as a pure function of what the candidates say.
//!
//! No IO, no clock, no randomness: the agent core feeds it the candidacies it has heard in an election
//! window (its own included) and asks for the winner, and when two masters meet after a partition heals
//! each asks [`should_yield`] with the same two candidacies, so exactly one steps down.
//!
//! The order, best first:
//! 1. more datastores the host can currently write its heartbeat to (the host that sees the most
//!    storage can protect the most VMs, FDM's rule);
//! 2. an incumbent master before a host that is not master (no flapping when a peer with the same
//!    reachability appears);
//! 3. the lower host id (any fixed total order works; the lowest is easy to predict when reading logs).

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

/// What a host says about itself when it stands for master.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Candidacy<H> {
    pub host: H,
    /// Datastores of the cluster this host wrote its heartbeat to within the lease time.
    pub reachable_datastores: u32,
    /// The host is master right now.
    pub incumbent: bool,
}

/// `Ordering::Greater` when `a` is the better master. A total order: equal only for the same host
/// saying the same thing.
pub fn compare<H: Ord>(a: &Candidacy<H>, b: &Candidacy<H>) -> Ordering {
    a.reachable_datastores
        .cmp(&b.reachable_datastores)
        .then(a.incumbent.cmp(&b.incumbent))
        .then_with(|| b.host.cmp(&a.host))
}

/// The best of the candidacies heard, or `None` for an empty round. Independent of input order.
pub fn winner<'a, H: Ord + 'a>(
    candidacies: impl IntoIterator<Item = &'a Candidacy<H>>,
) -> Option<&'a Candidacy<H>> {
    candidacies.into_iter().max_by(|a, b| compare(a, b))
}

/// Two masters meet: true when `me` must step down in favour of `other`. Both sides evaluate it with
/// the same two candidacies, so exactly one yields (hosts are distinct).
pub fn should_yield<H: Ord>(me: &Candidacy<H>, other: &Candidacy<H>) -> bool {
    compare(me, other) == Ordering::Less
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(host: u32, ds: u32, incumbent: bool) -> Candidacy<u32> {
        Candidacy {
            host,
            reachable_datastores: ds,
            incumbent,
        }
    }

    #[test]
    fn most_datastores_wins() {
        let all = [c(1, 1, false), c(2, 3, false), c(3, 2, false)];
        assert_eq!(winner(&all).unwrap().host, 2);
    }

    #[test]
    fn tie_on_datastores_goes_to_lowest_host_id() {
        let all = [c(7, 2, false), c(3, 2, false), c(5, 2, false)];
        assert_eq!(winner(&all).unwrap().host, 3);
    }

    #[test]
    fn incumbent_keeps_role_against_equal_candidate() {
        let all = [c(9, 2, true), c(1, 2, false)];
        assert_eq!(winner(&all).unwrap().host, 9);
    }

    #[test]
    fn incumbent_loses_to_more_datastores() {
        let all = [c(1, 2, true), c(9, 3, false)];
        assert_eq!(winner(&all).unwrap().host, 9);
    }

    #[test]
    fn empty_round_has_no_winner() {
        assert!(winner::<u32>(&[]).is_none());
    }

    #[test]
    fn two_masters_exactly_one_yields() {
        let a = c(4, 2, true);
        let b = c(2, 2, true);
        assert!(should_yield(&a, &b));
        assert!(!should_yield(&b, &a));
    }

    proptest! {
        #[test]
        fn winner_is_independent_of_order(mut v in proptest::collection::vec((1u32..50, 0u32..5, any::<bool>()), 1..20)) {
            // Distinct hosts, as in a real round.
            v.sort_by_key(|t| t.0);
            v.dedup_by_key(|t| t.0);
            let fwd: Vec<_> = v.iter().map(|&(h, d, i)| c(h, d, i)).collect();
            let mut rev = fwd.clone();
            rev.reverse();
            prop_assert_eq!(winner(&fwd), winner(&rev));
        }

        #[test]
        fn exactly_one_of_two_distinct_masters_yields(a in (1u32..50, 0u32..5), b in (1u32..50, 0u32..5)) {
            prop_assume!(a.0 != b.0);
            let x = c(a.0, a.1, true);
            let y = c(b.0, b.1, true);
            prop_assert!(should_yield(&x, &y) ^ should_yield(&y, &x));
        }
    }
}
