//! Batch planning: which hosts go in which batch, from the canary and `--max-parallel`.

/// `--max-parallel`: "N" hosts or "P%" of `targets` (rounded up, at least 1).
pub fn parse_max_parallel(s: &str, targets: usize) -> Result<usize, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(1);
    }
    let bad = || format!("max-parallel {s:?}: expected a host count (2) or a percentage (25%)");
    if let Some(p) = s.strip_suffix('%') {
        let p: usize = p.trim().parse().map_err(|_| bad())?;
        if p == 0 || p > 100 {
            return Err(format!(
                "max-parallel {s:?}: the percentage must be 1 to 100"
            ));
        }
        Ok((targets * p).div_ceil(100).max(1))
    } else {
        let n: usize = s.parse().map_err(|_| bad())?;
        if n == 0 {
            return Err(format!("max-parallel {s:?}: must be at least 1"));
        }
        Ok(n)
    }
}

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
    fn max_parallel_counts_and_percentages() {
        assert_eq!(parse_max_parallel("", 10), Ok(1));
        assert_eq!(parse_max_parallel("3", 10), Ok(3));
        assert_eq!(parse_max_parallel("25%", 10), Ok(3));
        assert_eq!(parse_max_parallel("1%", 10), Ok(1));
        assert_eq!(parse_max_parallel("100%", 7), Ok(7));
        for bad in ["0", "0%", "101%", "x", "-1", "%"] {
            assert!(parse_max_parallel(bad, 10).is_err(), "{bad}");
        }
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
