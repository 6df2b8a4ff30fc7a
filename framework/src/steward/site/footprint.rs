//! What a replica holds and waits for, for reports on runs that did not finish and for
//! footprint checks (bounded memory).

use super::SiteReplica;
use crate::service::Service;
use bulwark_crypto::threshold::ThresholdScheme;

impl<Svc: Service, S: ThresholdScheme> SiteReplica<Svc, S> {
    /// What this replica waits for, in one line: for a report on a run that did not finish.
    pub fn waiting_for(&self) -> String {
        let accepts: Vec<String> = self
            .accepts
            .iter()
            .map(|(seq, by_site)| format!("{}:{:?}", seq.0, by_site.keys().map(|s| s.0).collect::<Vec<_>>()))
            .collect();
        format!(
            "aru {} stable {} proposals {:?} accepts [{}] uncertified {:?} my_shares {} signer_pending {} relay {}",
            self.aru().0,
            self.stable_checkpoint().0,
            self.proposals.keys().map(|s| s.0).collect::<Vec<_>>(),
            accepts.join(" "),
            self.local
                .uncertified()
                .map(|(v, _)| format!("{} {}", v.seq.0, self.local.describe(v.seq)))
                .collect::<Vec<_>>(),
            self.my_shares.len(),
            self.signer.pending(),
            self.relay.held(),
        )
    }

    /// Entries held in the role's logs, for footprint checks.
    pub fn held(&self) -> usize {
        self.batches.len()
            + self.proposals.len()
            + self.accepts.len()
            + self.ordered.len()
            + self.my_shares.len()
            + self.signer.pending()
            + self.local.rounds()
            + self.relay.held()
    }

    /// RC2: requests of other sites this replica streamed to.
    pub fn reconciles_answered(&self) -> u64 {
        self.catch_up.streamed
    }

    /// Bytes of a checkpoint image being fetched held so far (SK1), for footprint checks.
    pub fn fetching_bytes(&self) -> u64 {
        self.checkpoints.fetching_bytes()
    }

    /// Slots the threshold signer remembers a shared value for (TS1), for footprint checks.
    pub fn signer_slots(&self) -> usize {
        self.signer.slots()
    }
}
