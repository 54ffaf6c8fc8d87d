//! The registry's own metrics: how its leases fare. Both daemons export them.

use metrics::{counter, describe_counter};

/// Lease renewals (keep-alive round trips), by outcome: `renewed`, `failed` (etcd unreachable
/// or refusing), `lost` (the lease had ended: the member registers again under a new one).
pub const LEASE_RENEWALS: &str = "porpoise_registry_lease_renewals_total";
/// Registrations made again after their lease ended under them.
pub const REREGISTRATIONS: &str = "porpoise_registry_reregistrations_total";

/// The outcomes [`LEASE_RENEWALS`] counts.
pub const OUTCOMES: [&str; 3] = ["renewed", "failed", "lost"];

/// Every metric this crate exports.
pub const ALL: &[&str] = &[LEASE_RENEWALS, REREGISTRATIONS];

/// Describes the metrics and registers each at 0.
pub fn describe() {
    describe_counter!(
        LEASE_RENEWALS,
        "Registry lease renewals, by outcome: renewed, failed (the registry unreachable), lost (the lease had ended)"
    );
    describe_counter!(REREGISTRATIONS, "Registrations made again under a new lease after the old one ended");
    for outcome in OUTCOMES {
        counter!(LEASE_RENEWALS, "outcome" => outcome).increment(0);
    }
    counter!(REREGISTRATIONS).increment(0);
}

/// Counts one renewal's `outcome` (one of [`OUTCOMES`]).
pub(crate) fn renewal(outcome: &'static str) {
    counter!(LEASE_RENEWALS, "outcome" => outcome).increment(1);
}

/// Counts a registration made again.
pub(crate) fn reregistered() {
    counter!(REREGISTRATIONS).increment(1);
}
