//! Spec parsing: defaults, bounds, and errors that name the field.

use super::*;

const MIN: &str = r#"
name = "shop"
server = "gunicorn"
entry = "app:application"
listen = "0.0.0.0:8000"
health = { path = "/health", timeout = "2s" }
"#;

#[test]
fn minimal_spec_gets_sane_defaults() {
    let s = AppSpec::parse(MIN).unwrap();
    assert_eq!(s.name.as_str(), "shop");
    assert_eq!(s.user, "shop");
    assert_eq!(s.releases_kept, 5);
    assert_eq!(s.workers_for(2), 5);
    assert_eq!(s.health.failures, 3);
}

fn with(extra: &str) -> Result<AppSpec, SpecError> {
    AppSpec::parse(&format!("{MIN}{extra}"))
}

fn replace(from: &str, to: &str) -> Result<AppSpec, SpecError> {
    AppSpec::parse(&MIN.replace(from, to))
}

#[test]
fn errors_name_the_field() {
    assert_eq!(replace("\"shop\"", "\"Shop\"").unwrap_err().field, "name");
    assert_eq!(
        replace("\"shop\"", "\"shop\\nExecStartPre=/bin/sh\"")
            .unwrap_err()
            .field,
        "name"
    );
    assert_eq!(
        replace("app:application", "app;rm -rf /:x")
            .unwrap_err()
            .field,
        "entry"
    );
    assert_eq!(replace("0.0.0.0:8000", "8000").unwrap_err().field, "listen");
    assert_eq!(
        replace("/health", "health").unwrap_err().field,
        "health.path"
    );
    assert_eq!(
        replace("\"2s\"", "\"soon\"").unwrap_err().field,
        "health.timeout"
    );
    assert_eq!(with("workers = 0").unwrap_err().field, "workers");
    assert_eq!(with("user = \"root\"").unwrap_err().field, "user");
    assert_eq!(replace("8000", "22").unwrap_err().field, "listen");
    assert_eq!(
        with("releases_kept = 0").unwrap_err().field,
        "releases_kept"
    );
    assert!(with("colour = \"blue\"")
        .unwrap_err()
        .reason
        .contains("colour"));
    assert!(replace("gunicorn", "waitress").is_err());
}

#[test]
fn pre_start_is_a_checked_argv_with_a_bounded_timeout() {
    let s = with("pre_start = [\"python\", \"-m\", \"app.migrate\"]").unwrap();
    assert_eq!(s.pre_start, ["python", "-m", "app.migrate"]);
    assert_eq!(s.pre_start_timeout, Duration::from_secs(300));
    let s = with("pre_start = [\"bin/migrate\"]\npre_start_timeout = \"30s\"").unwrap();
    assert_eq!(s.pre_start_timeout, Duration::from_secs(30));
    assert!(AppSpec::parse(MIN).unwrap().pre_start.is_empty());
    for bad in [
        "pre_start = \"python -m migrate\"",
        "pre_start = [\"\"]",
        "pre_start = [\"python\", \"\"]",
        "pre_start = [\"python\", \"a\\nb\"]",
        "pre_start = [\"-python\"]",
        "pre_start = [\"../../bin/sh\"]",
        "pre_start = [\"sh -c x\"]",
        "pre_start_timeout = \"1m\"",
        "pre_start = [\"python\"]\npre_start_timeout = \"2h\"",
    ] {
        let e = with(bad).unwrap_err();
        assert!(
            e.field.starts_with("pre_start") || e.field == "spec",
            "{bad}: {e}"
        );
    }
}

#[test]
fn env_that_would_inject_unit_lines_is_refused() {
    let e = with("env = { A = \"x\\nExecStartPre=/bin/sh -c evil\" }").unwrap_err();
    assert_eq!(e.field, "env.A");
    assert_eq!(with("env = { a = \"x\" }").unwrap_err().field, "env");
    assert_eq!(with("env = { \"A B\" = \"x\" }").unwrap_err().field, "env");
    assert_eq!(with("secrets = [\"db\"]").unwrap_err().field, "secrets");
    assert_eq!(
        with("env = { DB = \"x\" }\nsecrets = [\"DB\"]")
            .unwrap_err()
            .field,
        "secrets"
    );
}

#[test]
fn env_values_are_escaped_for_systemd() {
    assert_eq!(env_file_line("A", "plain"), "A=\"plain\"\n");
    assert_eq!(
        env_file_line("A", r#"q"b\s$HOME`x`"#),
        "A=\"q\\\"b\\\\s\\$HOME\\`x\\`\"\n"
    );
}

#[test]
fn logs_default_to_the_journal() {
    let s = AppSpec::parse(MIN).unwrap();
    assert_eq!(s.logs, Logs::default());
    assert_eq!(s.logs.mode, LogMode::Journal);
    let s = with("[logs]\nrate_limit_interval = \"10s\"\nrate_limit_burst = 500").unwrap();
    assert_eq!(s.logs.mode, LogMode::Journal);
    assert_eq!(s.logs.rate_limit_interval, Some(Duration::from_secs(10)));
    assert_eq!(s.logs.rate_limit_burst, Some(500));
    assert!(s.logs.rotation.is_none());
}

#[test]
fn files_mode_gets_bounded_rotation() {
    let s = with("[logs]\nmode = \"files\"").unwrap();
    assert_eq!(
        s.logs.rotation,
        Some(Rotation {
            period: Some(RotatePeriod::Daily),
            max_size: None,
            keep: 7,
            compress: true,
        })
    );
    let s =
        with("[logs]\nmode = \"files\"\nmax_size = \"100M\"\nkeep = 3\ncompress = false").unwrap();
    let r = s.logs.rotation.unwrap();
    assert_eq!(r.period, None, "size only");
    assert_eq!(r.max_size, Some(100 << 20));
    assert_eq!((r.keep, r.compress), (3, false));
    let s = with("[logs]\nmode = \"files\"\nperiod = \"weekly\"\nmax_size = \"2G\"").unwrap();
    let r = s.logs.rotation.unwrap();
    assert_eq!(r.period, Some(RotatePeriod::Weekly));
    assert_eq!(r.max_size, Some(2 << 30));
}

#[test]
fn bad_log_settings_name_the_field() {
    let field = |extra: &str| with(&format!("[logs]\n{extra}")).unwrap_err().field;
    assert_eq!(field("mode = \"syslog\""), "spec");
    assert_eq!(field("period = \"daily\""), "logs.period");
    assert_eq!(field("keep = 3"), "logs.keep");
    let e = with("[logs]\nmode = \"files\"\nperiod = \"hourly\"").unwrap_err();
    assert_eq!(e.field, "spec");
    assert!(
        e.reason.contains("`hourly`, expected one of `daily`"),
        "{e}"
    );
    assert_eq!(field("mode = \"files\"\nkeep = 0"), "logs.keep");
    assert_eq!(field("mode = \"files\"\nkeep = 1001"), "logs.keep");
    for size in [
        "100",
        "100MB",
        "1T",
        "-1M",
        "M",
        "99999999999999999999G",
        "65G",
        "",
    ] {
        assert_eq!(
            field(&format!("mode = \"files\"\nmax_size = \"{size}\"")),
            "logs.max_size",
            "{size:?}"
        );
    }
    assert_eq!(
        field("rate_limit_interval = \"2h\""),
        "logs.rate_limit_interval"
    );
    assert_eq!(
        field("rate_limit_interval = \"often\""),
        "logs.rate_limit_interval"
    );
    assert_eq!(field("rate_limit_burst = 2000000"), "logs.rate_limit_burst");
    assert!(with("[logs]\nmode = \"files\"\nrotate = 3")
        .unwrap_err()
        .reason
        .contains("rotate"));
}

#[test]
fn system_accounts_are_refused_as_users() {
    for user in [
        "root",
        "daemon",
        "www-data",
        "nobody",
        "bin",
        "sshd",
        "_apt",
        "_chrony",
        "systemd-network",
        "messagebus",
        "postgres",
        "fleet",
    ] {
        let e = with(&format!("user = \"{user}\"")).unwrap_err();
        assert_eq!(e.field, "user", "{user}");
    }
    assert!(with("user = \"daemon\"")
        .unwrap_err()
        .reason
        .contains("system account"));
    assert_eq!(with("user = \"shop-web\"").unwrap().user, "shop-web");
    // The default (the app's name) follows the same rule.
    let daemon = MIN.replace("name = \"shop\"", "name = \"daemon\"");
    assert_eq!(AppSpec::parse(&daemon).unwrap_err().field, "user");
}

#[test]
fn listen_refuses_reserved_ports_broadcast_and_multicast() {
    for addr in [
        "0.0.0.0:22",
        "0.0.0.0:7443",
        "127.0.0.1:7444",
        "[::]:9437",
        "0.0.0.0:0",
        "255.255.255.255:8000",
        "224.0.0.1:8000",
        "239.255.255.250:8000",
        "[ff02::1]:8000",
        "[ff05::2]:8000",
    ] {
        let e = replace("0.0.0.0:8000", addr).unwrap_err();
        assert_eq!(e.field, "listen", "{addr}");
    }
    assert!(replace("0.0.0.0:8000", "0.0.0.0:22")
        .unwrap_err()
        .reason
        .contains("SSH"));
    for ok in [
        "0.0.0.0:8000",
        "198.18.0.11:80",
        "[::]:8443",
        "127.0.0.1:2222",
    ] {
        assert_eq!(replace("0.0.0.0:8000", ok).unwrap().listen.to_string(), ok);
    }
}

#[test]
fn versions_are_safe_directory_names() {
    for ok in ["1.4.2", "2024-01-01", "v1+build.7", "a"] {
        assert!(ok.parse::<Version>().is_ok(), "{ok}");
    }
    for bad in [
        "",
        "..",
        "../x",
        "a/b",
        ".hidden",
        "1..2",
        "a b",
        &"1".repeat(65),
    ] {
        assert!(bad.parse::<Version>().is_err(), "{bad:?}");
    }
}

#[test]
fn analysis_is_absent_by_default_and_defaults_inside_its_section() {
    assert_eq!(AppSpec::parse(MIN).unwrap().analysis, None);
    let a = with("[rollout.analysis]\nbake = \"10m\"")
        .unwrap()
        .analysis
        .unwrap();
    assert_eq!(a.window, Duration::from_secs(60));
    assert_eq!(a.min_requests, 200);
    assert_eq!(a.max_error_ratio, 0.01);
    assert_eq!(a.max_error_increase, 2.0);
    assert_eq!(a.max_p99_increase, 1.5);
    assert_eq!(a.bake, Duration::from_secs(600));
    let a = with(
        "[rollout.analysis]\nwindow = \"30s\"\nmin_requests = 50\nmax_error_ratio = 0.05\n\
         max_error_increase = 3.0\nmax_p99_increase = 2.0",
    )
    .unwrap()
    .analysis
    .unwrap();
    assert_eq!(
        (a.window, a.min_requests, a.max_error_ratio, a.bake),
        (Duration::from_secs(30), 50, 0.05, Duration::ZERO)
    );
    // A rollout table without analysis is no analysis.
    assert_eq!(with("[rollout]").unwrap().analysis, None);
}

#[test]
fn analysis_thresholds_out_of_range_are_refused_with_the_field() {
    let e = |extra: &str| with(&format!("[rollout.analysis]\n{extra}")).unwrap_err();
    let bad = e("max_error_ratio = 1.5");
    assert_eq!(bad.field, "rollout.analysis.max_error_ratio");
    assert!(bad.to_string().contains("must be between 0 and 1"), "{bad}");
    assert_eq!(
        e("max_error_ratio = -0.1").field,
        "rollout.analysis.max_error_ratio"
    );
    assert_eq!(
        e("max_error_ratio = nan").field,
        "rollout.analysis.max_error_ratio"
    );
    assert_eq!(
        e("max_error_increase = 1.0").field,
        "rollout.analysis.max_error_increase"
    );
    assert_eq!(
        e("max_error_increase = inf").field,
        "rollout.analysis.max_error_increase"
    );
    let p99 = e("max_p99_increase = 1.2");
    assert_eq!(p99.field, "rollout.analysis.max_p99_increase");
    assert!(p99.reason.contains("bucket"), "{p99}");
    assert!(p99.reason.contains("1.34"), "names the bound: {p99}");
    assert_eq!(e("min_requests = 0").field, "rollout.analysis.min_requests");
    assert_eq!(e("window = \"0s\"").field, "rollout.analysis.window");
    assert_eq!(e("window = \"2h\"").field, "rollout.analysis.window");
    assert_eq!(e("window = \"soon\"").field, "rollout.analysis.window");
    assert_eq!(e("bake = \"2d\"").field, "rollout.analysis.bake");
    assert!(e("colour = 1").reason.contains("colour"));
    assert!(with("[rollout]\nspeed = 1").is_err());
}

#[test]
fn promql_gates_are_read_with_their_fields_named() {
    let spec = with(
        "[rollout.analysis]\n[[rollout.analysis.query]]\nname = \"checkout\"\n\
         prometheus = \"http://p:9090\"\nquery = 'sum(rate(x{release=\"{{release}}\"}[2m]))'\nmax = 0.5\n\
         [[rollout.analysis.query]]\nprometheus = \"http://p:9090\"\nquery = 'up'\nmin = 1",
    )
    .unwrap();
    assert_eq!(spec.analysis, Some(Analysis::default()));
    let names: Vec<&str> = spec.gates.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["checkout", "query2"]);
    assert_eq!(spec.gates[0].max, Some(0.5));
    let e = with(
        "[rollout.analysis]\n[[rollout.analysis.query]]\nprometheus = \"https://p:9090\"\n\
         query = 'up'\nmax = 1",
    )
    .unwrap_err();
    assert_eq!(e.field, "rollout.analysis.query[1].prometheus");
    let e = with(
        "[rollout.analysis]\n[[rollout.analysis.query]]\nprometheus = \"http://p:9090\"\n\
         query = 'up'\nmax = 1\nlimit = 2",
    )
    .unwrap_err();
    assert!(e.to_string().contains("limit"), "{e}");
    assert!(AppSpec::parse(MIN).unwrap().gates.is_empty());
}

#[test]
fn overrides_change_only_what_they_set() {
    use crate::v1::AnalysisOverride;
    let spec = with("[rollout.analysis]\nbake = \"10m\"").unwrap().analysis;
    let none = AnalysisOverride::default();
    assert_eq!(Analysis::with_override(spec, &none).unwrap(), spec);
    assert_eq!(Analysis::with_override(None, &none).unwrap(), None);
    let off = AnalysisOverride {
        disabled: true,
        ..Default::default()
    };
    assert_eq!(Analysis::with_override(spec, &off).unwrap(), None);
    let o = AnalysisOverride {
        window_ms: Some(30_000),
        min_requests: Some(10),
        bake_ms: Some(0),
        ..Default::default()
    };
    let a = Analysis::with_override(spec, &o).unwrap().unwrap();
    assert_eq!(a.window, Duration::from_secs(30));
    assert_eq!(a.min_requests, 10);
    assert_eq!(a.bake, Duration::ZERO);
    assert_eq!(a.max_error_ratio, 0.01, "kept from the spec");
    // A field set with no analysis in the spec starts from the defaults.
    let a = Analysis::with_override(None, &o).unwrap().unwrap();
    assert_eq!(a.max_p99_increase, 1.5);
    let bad = AnalysisOverride {
        max_error_ratio: Some(2.0),
        ..Default::default()
    };
    let e = Analysis::with_override(spec, &bad).unwrap_err();
    assert_eq!(e.field, "--max-error-ratio");
    let bad = AnalysisOverride {
        window_ms: Some(0),
        ..Default::default()
    };
    assert_eq!(
        Analysis::with_override(spec, &bad).unwrap_err().field,
        "--analysis-window"
    );
}

#[test]
fn flags_are_checked_like_the_spec() {
    assert_eq!(check_flag("max_error_ratio", 0.02).unwrap(), 0.02);
    assert!(check_flag("max_error_ratio", 1.2).is_err());
    assert!(check_flag("max_p99_increase", 1.1).is_err());
    assert!(check_min_requests(0).is_err());
    assert!(check_window("window", Duration::ZERO).is_err());
    assert_eq!(
        check_window("bake", Duration::ZERO).unwrap(),
        Duration::ZERO
    );
    assert!((finest_bucket_step() - 4.0 / 3.0).abs() < 1e-9);
}
