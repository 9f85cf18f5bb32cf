//! The files the agent renders from a validated spec: the env file (`EnvironmentFile=`),
//! the logrotate file and the service and socket units. Values come from the fuzzer
//! (env values, secret values, entry, user, log settings); a spec is built from them as
//! TOML and must pass validation first, as on a real host.
//!
//! Properties: no value can add a line, a directive or a key; the env file reads back
//! (by the agent's own parser and by systemd's quoting rules) as exactly the values given;
//! ExecStart splits back into the expected argv ending in the spec's entry.
#![no_main]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arbitrary::Arbitrary;
use fleet_agent::logrotate;
use fleet_agent::units::{self, Layout, RenderError, Runtime};
use fleet_fuzz::{split_exec, valid_env_key};
use fleet_proto::spec::{check_env_value, AppSpec};
use libfuzzer_sys::fuzz_target;
use toml::{Table, Value};

#[derive(Arbitrary, Debug)]
struct Input {
    name: Option<String>,
    uvicorn: bool,
    entry: Option<String>,
    listen: Option<String>,
    user: Option<String>,
    workers: Option<u32>,
    env: Vec<(String, String)>,
    secrets: Vec<(String, String)>,
    files: bool,
    period: Option<u8>,
    max_size: Option<String>,
    keep: Option<u32>,
    compress: Option<bool>,
    rate_interval: Option<String>,
    rate_burst: Option<u32>,
    graceful: Option<String>,
    cores: u8,
}

fn spec_text(i: &Input) -> String {
    let mut t = Table::new();
    let s = |v: &str| Value::String(v.to_owned());
    t.insert("name".into(), s(i.name.as_deref().unwrap_or("shop")));
    t.insert(
        "server".into(),
        s(if i.uvicorn { "uvicorn" } else { "gunicorn" }),
    );
    t.insert(
        "entry".into(),
        s(i.entry.as_deref().unwrap_or("app:application")),
    );
    t.insert(
        "listen".into(),
        s(i.listen.as_deref().unwrap_or("127.0.0.1:8000")),
    );
    if let Some(u) = &i.user {
        t.insert("user".into(), s(u));
    }
    if let Some(w) = i.workers {
        t.insert("workers".into(), Value::Integer(w.into()));
    }
    let mut h = Table::new();
    h.insert("path".into(), s("/health"));
    t.insert("health".into(), Value::Table(h));
    // Keys are validated to [A-Z_][A-Z0-9_]* before anything is rendered; the fuzzer's
    // effort goes into the values.
    let env: Table = i
        .env
        .iter()
        .filter(|(k, _)| valid_env_key(k))
        .map(|(k, v)| (k.clone(), s(v)))
        .collect();
    let secrets: Vec<Value> = secret_names(i, &env).into_iter().map(|k| s(&k)).collect();
    t.insert("env".into(), Value::Table(env));
    t.insert("secrets".into(), Value::Array(secrets));
    let mut l = Table::new();
    l.insert("mode".into(), s(if i.files { "files" } else { "journal" }));
    if i.files {
        if let Some(p) = i.period {
            l.insert(
                "period".into(),
                s(["daily", "weekly", "monthly"][p as usize % 3]),
            );
        }
        if let Some(m) = &i.max_size {
            l.insert("max_size".into(), s(m));
        }
        if let Some(k) = i.keep {
            l.insert("keep".into(), Value::Integer(k.into()));
        }
        if let Some(c) = i.compress {
            l.insert("compress".into(), Value::Boolean(c));
        }
    }
    if let Some(r) = &i.rate_interval {
        l.insert("rate_limit_interval".into(), s(r));
    }
    if let Some(b) = i.rate_burst {
        l.insert("rate_limit_burst".into(), Value::Integer(b.into()));
    }
    t.insert("logs".into(), Value::Table(l));
    if let Some(g) = &i.graceful {
        t.insert("graceful_timeout".into(), s(g));
    }
    toml::to_string(&t).unwrap()
}

fn secret_names(i: &Input, env: &Table) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for (k, _) in &i.secrets {
        if valid_env_key(k) && !env.contains_key(k) && !names.contains(k) {
            names.push(k.clone());
        }
    }
    names
}

/// systemd's reading of a double-quoted `EnvironmentFile=` value: `\` escapes the next
/// character, an unescaped `"` ends the value (and must be the last character).
fn systemd_env_value(line: &str, key: &str) -> String {
    let body = line
        .strip_prefix(key)
        .and_then(|r| r.strip_prefix("=\""))
        .unwrap_or_else(|| panic!("line {line:?} does not start with {key}=\""));
    let mut v = String::new();
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => v.push(chars.next().expect("dangling backslash")),
            '"' => {
                assert_eq!(chars.next(), None, "text after the closing quote: {line:?}");
                return v;
            }
            '$' | '`' => panic!("unescaped {c} in {line:?}"),
            c => v.push(c),
        }
    }
    panic!("unterminated value in {line:?}");
}

fn check_env(spec: &AppSpec, secrets: &BTreeMap<String, String>) {
    let text = match units::render_env(spec, secrets) {
        Ok(t) => t,
        Err(RenderError::BadSecret { key, .. }) => {
            assert!(check_env_value(&key, &secrets[&key]).is_err());
            return;
        }
        Err(e) => panic!("render_env: {e}"),
    };
    let mut expected: Vec<(String, String)> = spec
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut names = spec.secrets.clone();
    names.sort();
    expected.extend(names.into_iter().map(|k| {
        let v = secrets[&k].clone();
        (k, v)
    }));
    assert!(!text.contains(['\r', '\0']));
    let lines: Vec<&str> = text.strip_suffix('\n').unwrap().split('\n').collect();
    assert_eq!(lines.len(), 1 + expected.len(), "{text:?}");
    assert!(lines[0].starts_with(&format!("# Written by fleet-agent for app {}: ", spec.name)));
    for (line, (k, v)) in lines[1..].iter().zip(&expected) {
        assert_eq!(&systemd_env_value(line, k), v);
    }
    assert_eq!(units::parse_env(&text), expected);
}

fn check_logrotate(spec: &AppSpec) {
    let Some(text) = logrotate::render(spec) else {
        assert!(spec.logs.rotation.is_none());
        return;
    };
    let app = spec.name.as_str();
    let signal = logrotate::reopen_signal(spec.server);
    let head = format!("/var/log/fleet/{app}/access.log /var/log/fleet/{app}/error.log {{");
    let post = format!(
        "        systemctl kill --signal={signal} --kill-whom=main fleet-app-{app}.service >/dev/null 2>&1 || true"
    );
    let lines: Vec<&str> = text.strip_suffix('\n').unwrap().split('\n').collect();
    assert!(lines[0].starts_with("# Written by fleet-agent"));
    assert_eq!(lines[1], head);
    assert_eq!(*lines.last().unwrap(), "}");
    let fixed = [
        "daily",
        "weekly",
        "monthly",
        "compress",
        "delaycompress",
        "nocompress",
        "missingok",
        "notifempty",
        "create",
        "sharedscripts",
        "postrotate",
        "endscript",
    ];
    for l in &lines[2..lines.len() - 1] {
        if *l == post {
            continue;
        }
        let d = l.strip_prefix("    ").unwrap_or_else(|| panic!("{l:?}"));
        let ok = fixed.contains(&d)
            || ["rotate ", "size ", "maxsize "].iter().any(|p| {
                d.strip_prefix(p)
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            });
        assert!(ok, "unexpected logrotate line {l:?}\n{text}");
    }
    assert_eq!(text.matches('{').count(), 1);
    assert_eq!(text.matches('}').count(), 1);
}

/// Keys the service unit may set, and how often.
const SERVICE_KEYS: &[(&str, usize)] = &[
    ("Description", 1),
    ("Requires", 1),
    ("After", 1),
    ("StartLimitIntervalSec", 1),
    ("StartLimitBurst", 1),
    ("WantedBy", 1),
    ("Type", 1),
    ("User", 1),
    ("WorkingDirectory", 1),
    ("Environment", 1),
    ("EnvironmentFile", 1),
    ("ExecStart", 1),
    ("ExecReload", 1),
    ("KillMode", 1),
    ("TimeoutStopSec", 1),
    ("Restart", 1),
    ("RestartSec", 1),
    ("CPUAccounting", 1),
    ("MemoryAccounting", 1),
    ("TasksAccounting", 1),
    ("SyslogIdentifier", 1),
    ("LogsDirectory", 1),
    ("LogsDirectoryMode", 1),
    ("LogRateLimitIntervalSec", 1),
    ("LogRateLimitBurst", 1),
];

fn unit_settings(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in text.lines() {
        if l.is_empty() || l.starts_with('#') || (l.starts_with('[') && l.ends_with(']')) {
            assert!(!l.contains('\\'), "{l:?}");
            continue;
        }
        let (k, v) = l
            .split_once('=')
            .unwrap_or_else(|| panic!("not a setting: {l:?}"));
        assert!(k.bytes().all(|b| b.is_ascii_alphanumeric()), "key {k:?}");
        assert!(!v.ends_with('\\'), "line continuation in {l:?}");
        assert!(!v.contains(|c: char| c.is_control()), "{l:?}");
        out.entry(k.to_owned()).or_default().push(v.to_owned());
    }
    out
}

fn check_units(spec: &AppSpec, cores: u32) {
    let app_dir = PathBuf::from(format!("/var/lib/fleet/apps/{}", spec.name));
    let layout = Layout {
        app_dir: &app_dir,
        env_dir: Path::new("/etc/fleet/env"),
        worker_dir: Path::new(fleet_agent::asgi_worker::DIR),
    };
    let runtime = Runtime {
        gunicorn: "/usr/bin/gunicorn".into(),
        // The release is a validated version; it lands in the access-log format.
        release: "1.0.0-rc.1".parse().expect("a valid version"),
    };
    let text = match units::render_service(spec, &layout, &runtime, cores) {
        Ok(t) => t,
        // Refusing is fine (the deploy fails with that error); writing something unsafe is not.
        Err(RenderError::Unsafe { .. }) => return,
        Err(e) => panic!("render_service: {e}"),
    };
    let settings = unit_settings(&text);
    let mut hardening: BTreeMap<&str, usize> = BTreeMap::new();
    for l in units::HARDENING.lines() {
        *hardening.entry(l.split_once('=').unwrap().0).or_default() += 1;
    }
    for (k, v) in &settings {
        let allowed = SERVICE_KEYS
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, n)| *n)
            .or_else(|| hardening.get(k.as_str()).copied());
        match allowed {
            Some(n) => assert!(v.len() <= n, "{k} set {} times\n{text}", v.len()),
            None => panic!("unexpected setting {k}\n{text}"),
        }
    }
    assert_eq!(settings["User"], [spec.user.replace('%', "%%")]);
    let argv = split_exec(&settings["ExecStart"][0]).unwrap();
    assert_eq!(argv[0], "/usr/bin/gunicorn");
    assert_eq!(argv.last().unwrap(), &spec.entry, "{argv:?}");
    assert!(!argv[0].starts_with(['@', '-', ':', '+', '!']));

    let socket = units::render_socket(spec).unwrap();
    let s = unit_settings(&socket);
    assert_eq!(s["ListenStream"], [spec.listen.to_string()]);
    assert_eq!(s.len(), 4, "{socket}");
}

fuzz_target!(|input: Input| {
    let text = spec_text(&input);
    let Ok(spec) = AppSpec::parse(&text) else {
        return;
    };
    let secrets: BTreeMap<String, String> = input
        .secrets
        .iter()
        .filter(|(k, _)| spec.secrets.contains(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .rev() // first value of a repeated name wins, as names were picked first-seen
        .collect();
    check_env(&spec, &secrets);
    check_logrotate(&spec);
    check_units(&spec, u32::from(input.cores));
});
