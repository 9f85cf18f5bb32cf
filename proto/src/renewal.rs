//! When a certificate is renewed: at two thirds of its lifetime, for agents and for the
//! controller's serving certificate alike, leaving a third of it to ride out an outage.

use std::time::Duration;

/// Renewal starts at this fraction of the lifetime, leaving a third of it to ride out a
/// controller outage.
const RENEW_NUM: i64 = 2;
const RENEW_DEN: i64 = 3;

/// Unix second at which a certificate valid from `not_before` to `not_after` is renewed.
pub fn renew_at(not_before: i64, not_after: i64) -> i64 {
    let lifetime = (not_after - not_before).max(0);
    not_before + lifetime / RENEW_DEN * RENEW_NUM + lifetime % RENEW_DEN * RENEW_NUM / RENEW_DEN
}

/// How long from `now` until renewal is due; zero when already past that point.
pub fn renew_delay(now: i64, not_before: i64, not_after: i64) -> Duration {
    Duration::from_secs(renew_at(not_before, not_after).saturating_sub(now).max(0) as u64)
}

/// How long to wait for an answer (or after a refusal) before asking again: a tenth of the
/// lifetime, between 1 s and 60 s, so even very short test certificates get several tries
/// before they expire and long ones do not hammer the controller.
pub fn retry_delay(not_before: i64, not_after: i64) -> Duration {
    let tenth = ((not_after - not_before).max(0) / 10) as u64;
    Duration::from_secs(tenth.clamp(1, 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_two_thirds_of_the_lifetime() {
        assert_eq!(renew_at(1_000, 4_000), 3_000);
        assert_eq!(renew_at(0, 86_400), 57_600);
        // Odd lifetimes round down, never past two thirds.
        assert_eq!(renew_at(0, 100), 66);
        assert_eq!(renew_delay(1_000, 1_000, 4_000), Duration::from_secs(2_000));
        assert_eq!(renew_delay(2_999, 1_000, 4_000), Duration::from_secs(1));
    }

    #[test]
    fn past_the_renewal_point_renews_at_once() {
        assert_eq!(renew_delay(3_000, 1_000, 4_000), Duration::ZERO);
        assert_eq!(renew_delay(9_999, 1_000, 4_000), Duration::ZERO);
        // A nonsensical certificate (not_after before not_before) renews at once too.
        assert_eq!(renew_delay(1_000, 1_000, 500), Duration::ZERO);
    }

    #[test]
    fn huge_lifetimes_do_not_overflow() {
        let at = renew_at(0, i64::MAX);
        assert!(at > 0 && at < i64::MAX);
    }

    #[test]
    fn retry_delay_is_bounded() {
        assert_eq!(retry_delay(0, 5), Duration::from_secs(1));
        assert_eq!(retry_delay(0, 300), Duration::from_secs(30));
        assert_eq!(retry_delay(0, 86_400), Duration::from_secs(60));
        assert_eq!(retry_delay(10, 0), Duration::from_secs(1));
    }
}
