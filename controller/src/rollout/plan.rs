//! Batch planning: which hosts go in which batch, from the canary and `--max-parallel`
//! (parsed by `fleet_proto::values::MaxParallel`, as fleetctl parses it).

/// Canary batch (if any) then batches of `max_parallel`, in the order given.
pub fn plan_batches(hosts: &[String], canary: usize, max_parallel: usize) -> Vec<Vec<String>> {
    let canary = canary.min(hosts.len());
    let mut out = Vec::new();
    if canary > 0 {
        out.push(hosts[..canary].to_vec());
    }
    for chunk in hosts[canary..].chunks(max_parallel.max(1)) {
        out.push(chunk.to_vec());
    }
    out
}

/// Orders host names as people count: host2 before host10.
pub fn natural_sort(hosts: &mut [String]) {
    fn key(s: &str) -> (String, u64, String) {
        let digits = s.len() - s.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        let (stem, num) = s.split_at(s.len() - digits);
        (stem.to_owned(), num.parse().unwrap_or(0), s.to_owned())
    }
    hosts.sort_by_key(|h| key(h));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::record::tests::names;
    use fleet_proto::values::MaxParallel;

    #[test]
    fn batches_from_canary_and_max_parallel() {
        let b = plan_batches(&names(5), 1, 2);
        assert_eq!(
            b,
            vec![
                vec!["host1"],
                vec!["host2", "host3"],
                vec!["host4", "host5"]
            ]
        );
        assert_eq!(plan_batches(&names(3), 0, 5), vec![names(3)]);
        assert_eq!(plan_batches(&names(2), 5, 1), vec![names(2)]);
        assert!(plan_batches(&[], 1, 1).is_empty());
    }

    #[test]
    fn max_parallel_of_the_targets() {
        let b =
            |mp: &str, n| plan_batches(&names(n), 0, MaxParallel::parse_wire(mp).unwrap().hosts(n));
        assert_eq!(b("", 3).len(), 3, "empty: one at a time");
        assert_eq!(b("25%", 10).len(), 4, "3 + 3 + 3 + 1");
    }

    #[test]
    fn hosts_sort_as_people_count() {
        let mut h: Vec<String> = ["host10", "host2", "host1", "db"]
            .map(String::from)
            .to_vec();
        natural_sort(&mut h);
        assert_eq!(h, ["db", "host1", "host2", "host10"]);
    }
}
