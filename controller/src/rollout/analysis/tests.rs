use super::*;
use std::time::Duration;

/// `n` requests of which `errors` 5xx, all taking `secs`.
fn rel(release: &str, n: u64, errors: u64, secs: f64) -> ReleaseRequests {
    let i = fleet_proto::requests::bucket_index(secs);
    ReleaseRequests {
        release: release.into(),
        status_2xx: n - errors,
        status_5xx: errors,
        duration_buckets: (0..SLOTS).map(|b| if b >= i { n } else { 0 }).collect(),
        duration_sum_seconds: n as f64 * secs,
        ..Default::default()
    }
}

fn stats(epoch: u64, releases: Vec<ReleaseRequests>) -> RequestStats {
    RequestStats {
        epoch,
        releases,
        unparsed: 0,
    }
}

fn side(n: u64, errors: u64, secs: f64) -> Side {
    let s = stats(1, vec![rel("r", n, errors, secs)]);
    Side {
        hosts: 1,
        counts: window(&stats(1, vec![]), &s, "r").unwrap(),
    }
}

fn judge(t: &Analysis, who: &str, canary: &Side, baseline: Option<&Side>) -> Judgement {
    judge_against(t, who, canary, baseline, "baseline")
}

fn t() -> Analysis {
    Analysis {
        window: Duration::from_secs(60),
        ..Analysis::default()
    }
}

#[test]
fn a_window_is_the_difference_of_two_answers() {
    let before = stats(7, vec![rel("2.0", 100, 1, 0.02), rel("1.0", 50, 0, 0.02)]);
    let after = stats(7, vec![rel("2.0", 300, 11, 0.02), rel("1.0", 50, 0, 0.02)]);
    let w = window(&before, &after, "2.0").unwrap();
    assert_eq!((w.requests, w.errors), (200, 10));
    assert_eq!(*w.buckets.last().unwrap(), 200);
    assert_eq!(window(&before, &after, "1.0").unwrap().requests, 0);
    // A release that just started is absent before: it had served nothing.
    assert_eq!(
        window(&stats(7, vec![]), &after, "2.0").unwrap().requests,
        300
    );
    assert_eq!(window(&before, &after, "3.0").unwrap(), Counts::empty());
}

#[test]
fn windows_that_mean_nothing_cannot_be_judged() {
    let a = stats(1, vec![rel("r", 10, 0, 0.01)]);
    let b = stats(2, vec![rel("r", 20, 0, 0.01)]);
    assert_eq!(window(&a, &b, "r"), Err(CannotJudge::EpochChanged));
    let back = stats(1, vec![rel("r", 5, 0, 0.01)]);
    assert_eq!(window(&a, &back, "r"), Err(CannotJudge::Backwards));
    assert_eq!(
        window(&a, &stats(1, vec![]), "r"),
        Err(CannotJudge::Backwards)
    );
    let mut bad = rel("r", 20, 0, 0.01);
    bad.duration_buckets.pop();
    assert!(matches!(
        window(&a, &stats(1, vec![bad]), "r"),
        Err(CannotJudge::Histogram(_))
    ));
    let mut bad = rel("r", 20, 0, 0.01);
    bad.duration_buckets[0] = 30;
    assert!(matches!(
        window(&a, &stats(1, vec![bad]), "r"),
        Err(CannotJudge::Histogram(_))
    ));
    let mut bad = rel("r", 20, 0, 0.01);
    *bad.duration_buckets.last_mut().unwrap() = 19;
    assert!(matches!(
        window(&a, &stats(1, vec![bad]), "r"),
        Err(CannotJudge::Histogram(_))
    ));
}

#[test]
fn p99_is_interpolated_inside_its_bucket() {
    // 100 requests: 50 at ≤ 10 ms, 50 in (150 ms, 250 ms]. Rank 99 is 49/50 into it.
    let mut c = Counts::empty();
    for (i, b) in DURATION_BUCKETS.iter().enumerate() {
        c.buckets[i] = if *b >= 0.25 {
            100
        } else if *b >= 0.01 {
            50
        } else {
            0
        };
    }
    c.buckets[SLOTS - 1] = 100;
    c.requests = 100;
    let p99 = c.p99().unwrap();
    assert!((p99 - (0.15 + 0.1 * 49.0 / 50.0)).abs() < 1e-9, "{p99}");
    let p50 = c.quantile(0.5).unwrap();
    assert!((p50 - 0.01).abs() < 1e-9, "{p50}");
    // Everything in the first bucket interpolates from zero.
    let fast = side(100, 0, 0.0005).counts;
    assert!((fast.p99().unwrap() - 0.00099).abs() < 1e-9);
    // Slower than the last bound: the histogram only knows "over 10 s".
    assert_eq!(side(100, 0, 30.0).counts.p99(), Some(10.0));
    assert_eq!(Counts::empty().p99(), None);
}

#[test]
fn hosts_add_up() {
    let mut sum = side(100, 1, 0.02).counts;
    sum.add(&side(300, 5, 0.02).counts);
    assert_eq!((sum.requests, sum.errors), (400, 6));
    assert_eq!(*sum.buckets.last().unwrap(), 400);
    let mut from_empty = Counts::default();
    from_empty.add(&sum);
    assert_eq!(from_empty, sum);
}

#[test]
fn a_sick_canary_fails_on_the_absolute_ratio_with_the_numbers() {
    let j = judge(
        &t(),
        "canary",
        &side(2000, 96, 0.02),
        Some(&side(3000, 3, 0.02)),
    );
    assert_eq!(j.verdict, Verdict::Fail);
    assert_eq!(
        j.message,
        "canary 5xx 4.8 % (96/2000) vs baseline 0.1 % (3/3000) > max 1.0 %: reverting"
    );
}

#[test]
fn a_canary_under_the_absolute_max_fails_on_the_increase() {
    let j = judge(
        &t(),
        "canary",
        &side(2000, 16, 0.02),
        Some(&side(3000, 3, 0.02)),
    );
    assert_eq!(j.verdict, Verdict::Fail);
    assert_eq!(
        j.message,
        "canary 5xx 0.8 % (16/2000) vs baseline 0.1 % (3/3000) = 8× > 2×: reverting"
    );
    // A clean baseline counts as 0.1 %: one error in 2000 is no "infinite" increase.
    let j = judge(
        &t(),
        "canary",
        &side(2000, 1, 0.02),
        Some(&side(3000, 0, 0.02)),
    );
    assert_eq!(j.verdict, Verdict::Pass, "{}", j.message);
    // Nor are a few errors in a small window: 4 in 400 is 10× the baseline's 0.1 %.
    let j = judge(
        &t(),
        "canary",
        &side(400, 4, 0.02),
        Some(&side(3000, 3, 0.02)),
    );
    assert_eq!(j.verdict, Verdict::Pass, "{}", j.message);
    let j = judge(
        &t(),
        "canary",
        &side(500, 5, 0.02),
        Some(&side(3000, 3, 0.02)),
    );
    assert_eq!(j.verdict, Verdict::Fail, "{}", j.message);
}

#[test]
fn a_slow_canary_fails_on_p99() {
    let j = judge(
        &t(),
        "batch 2",
        &side(2000, 0, 0.41),
        Some(&side(3000, 0, 0.18)),
    );
    assert_eq!(j.verdict, Verdict::Fail);
    // Both interpolate to 99 % of their bucket: (0.4, 0.6] and (0.15, 0.25].
    assert_eq!(
        j.message,
        "batch 2 p99 598 ms vs baseline 249 ms = 2.4× > 1.5×: reverting"
    );
    // Tiny latencies are not compared as ratios.
    let j = judge(
        &t(),
        "canary",
        &side(2000, 0, 0.004),
        Some(&side(3000, 0, 0.001)),
    );
    assert_eq!(j.verdict, Verdict::Pass, "{}", j.message);
}

#[test]
fn a_healthy_canary_passes_and_says_against_what() {
    let j = judge(
        &t(),
        "canary",
        &side(2000, 2, 0.02),
        Some(&side(3000, 3, 0.02)),
    );
    assert_eq!(j.verdict, Verdict::Pass);
    assert_eq!(
        j.message,
        "canary 5xx 0.1 % (2/2000) vs baseline 0.1 % (3/3000), p99 25 ms vs 25 ms: \
         within max 1.0 %, 2× and 1.5×: promoting"
    );
}

#[test]
fn too_little_traffic_waits_and_never_passes() {
    let j = judge(
        &t(),
        "canary",
        &side(150, 0, 0.02),
        Some(&side(3000, 3, 0.02)),
    );
    assert_eq!(j.verdict, Verdict::Wait);
    assert_eq!(
        j.message,
        "canary served 150 requests in 1m on 1 hosts, needs 200: waiting for more traffic"
    );
}

#[test]
fn without_a_baseline_only_the_absolute_threshold_applies() {
    // Slow and with errors, but under the absolute max: nothing to compare with.
    let j = judge(&t(), "fleet", &side(2000, 10, 0.5), None);
    assert_eq!(j.verdict, Verdict::Pass);
    assert!(j.message.contains("no baseline left"), "{}", j.message);
    let j = judge(&t(), "fleet", &side(2000, 40, 0.02), None);
    assert_eq!(j.verdict, Verdict::Fail);
    assert_eq!(
        j.message,
        "fleet 5xx 2.0 % (40/2000) > max 1.0 %: reverting"
    );
    // A baseline with too little traffic is no baseline.
    let j = judge(
        &t(),
        "canary",
        &side(2000, 10, 0.5),
        Some(&side(20, 0, 0.02)),
    );
    assert_eq!(j.verdict, Verdict::Pass);
    assert!(
        j.message.contains("baseline served only 20"),
        "{}",
        j.message
    );
}

#[test]
fn samples_spread_over_the_list() {
    let all: Vec<u32> = (0..100).collect();
    assert_eq!(spread(&all, 4), [0, 25, 50, 75]);
    assert_eq!(spread(&all[..3], 50), [0, 1, 2]);
    assert!(spread::<u32>(&[], 5).is_empty());
}

#[test]
fn numbers_read_as_people_write_them() {
    assert_eq!(pct(0.048), "4.8 %");
    assert_eq!(pct(0.0), "0.0 %");
    assert_eq!(pct(0.0004), "0.04 %");
    assert_eq!(fmt_secs(0.412), "412 ms");
    assert_eq!(fmt_secs(1.5), "1.50 s");
    assert_eq!(fmt_secs(10.0), "> 10 s");
    assert_eq!(times(2.2857), "2.29×");
}

#[test]
fn a_bake_compares_the_fleet_with_the_rollout_baseline() {
    let reference = side(20_000, 20, 0.05);
    let j = judge_against(
        &t(),
        "fleet",
        &side(2000, 0, 0.2),
        Some(&reference),
        "rollout baseline",
    );
    assert_eq!(j.verdict, Verdict::Fail);
    assert!(
        j.message.starts_with("fleet p99 ") && j.message.contains(" vs rollout baseline "),
        "{}",
        j.message
    );
    let j = judge_against(
        &t(),
        "fleet",
        &side(2000, 0, 0.05),
        Some(&reference),
        "rollout baseline",
    );
    assert_eq!(j.verdict, Verdict::Pass, "{}", j.message);
}
