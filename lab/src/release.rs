//! Release tarballs of the sample apps in `lab/fixtures/`, built in memory for tests and
//! the demo: the fixture's files plus a `RELEASE` file naming the version, with optional
//! extra or replaced files (a broken `app.py`) and raw entries (unsafe archives).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures"))
}

/// A tar.gz holding `files` (path, contents), in order.
pub fn tar_gz(files: &[(&str, Vec<u8>)]) -> Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        tar.append_data(&mut h, path, data.as_slice())
            .with_context(|| format!("tar entry {path}"))?;
    }
    Ok(tar.into_inner()?.finish()?)
}

/// The files of fixture `fixture` plus a `RELEASE` file naming `version`.
fn fixture_files(fixture: &str, version: &str) -> Result<Vec<(String, Vec<u8>)>> {
    let dir = fixtures_dir().join(fixture);
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path();
        if path.is_file() {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            files.push((name, std::fs::read(&path)?));
        }
    }
    files.push(("RELEASE".into(), format!("{version}\n").into_bytes()));
    Ok(files)
}

fn tar_of(files: &[(String, Vec<u8>)]) -> Result<Vec<u8>> {
    let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
    tar_gz(&refs)
}

/// The sample app `fixture` (`wsgi` or `asgi`) as release `version`, with `overrides`
/// replacing or adding files.
pub fn sample(fixture: &str, version: &str, overrides: &[(&str, &str)]) -> Result<Vec<u8>> {
    let mut files = fixture_files(fixture, version)?;
    for (name, contents) in overrides {
        files.retain(|(n, _)| n != name);
        files.push(((*name).to_owned(), contents.as_bytes().to_vec()));
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    tar_of(&files)
}

/// The sample app `fixture` as release `version` plus `extra` files (binary, e.g. wheels).
pub fn sample_with(fixture: &str, version: &str, extra: &[(&str, Vec<u8>)]) -> Result<Vec<u8>> {
    let mut files = fixture_files(fixture, version)?;
    files.extend(extra.iter().map(|(n, d)| ((*n).to_owned(), d.clone())));
    tar_of(&files)
}

/// A pure-python wheel `name-version-py3-none-any.whl` holding `name/__init__.py` with
/// `VALUE = "<value>"`, zipped by the outer machine's python (no zip crate for tests).
/// Returns (file name, bytes).
pub fn tiny_wheel(name: &str, version: &str, value: &str) -> Result<(String, Vec<u8>)> {
    let file = format!("{name}-{version}-py3-none-any.whl");
    let script = r#"
import io, sys, zipfile
name, version, value = sys.argv[1:4]
di = f"{name}-{version}.dist-info"
buf = io.BytesIO()
with zipfile.ZipFile(buf, "w") as z:
    z.writestr(f"{name}/__init__.py", f"VALUE = {value!r}\n")
    z.writestr(f"{di}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    z.writestr(f"{di}/WHEEL", "Wheel-Version: 1.0\nGenerator: fleet-lab\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    z.writestr(f"{di}/RECORD", f"{name}/__init__.py,,\n{di}/METADATA,,\n{di}/WHEEL,,\n{di}/RECORD,,\n")
sys.stdout.buffer.write(buf.getvalue())
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .args([name, version, value])
        .output()
        .context("run python3 to build a wheel")?;
    anyhow::ensure!(
        out.status.success(),
        "python3 could not build {file}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((file, out.stdout))
}

/// The venv part of a release that brings its own uvicorn: `requirements.txt` and
/// `wheels/*.whl` as `lab/uvicorn-wheels.sh` downloaded them (lab/test-all.sh runs it), for
/// [`sample_with`].
pub fn uvicorn_venv_files() -> Result<VenvFiles> {
    let script = fixtures_dir().join("../uvicorn-wheels.sh");
    let out = std::process::Command::new("sh")
        .arg(&script)
        .arg("--path")
        .output()
        .with_context(|| format!("run {} --path", script.display()))?;
    anyhow::ensure!(out.status.success(), "{} --path failed", script.display());
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    anyhow::ensure!(
        dir.join(".complete").exists(),
        "the uvicorn wheels are not downloaded at {}: run `sh lab/uvicorn-wheels.sh` (lab/test-all.sh does)",
        dir.display()
    );
    let requirements = std::fs::read_to_string(dir.join("requirements.txt"))
        .with_context(|| format!("read {}/requirements.txt", dir.display()))?;
    let uvicorn = requirements
        .lines()
        .find_map(|l| l.strip_prefix("uvicorn=="))
        .context("requirements.txt pins no uvicorn")?
        .to_owned();
    let mut files = vec![("requirements.txt".to_owned(), requirements.into_bytes())];
    for entry in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".whl") {
            files.push((format!("wheels/{name}"), std::fs::read(&path)?));
        }
    }
    files.sort();
    Ok(VenvFiles { files, uvicorn })
}

/// Files of a release's venv part (path in the release, contents).
pub struct VenvFiles {
    pub files: Vec<(String, Vec<u8>)>,
    /// The uvicorn version they pin.
    pub uvicorn: String,
}

/// A WSGI `app.py` whose every 20th request to / of each worker answers 500 (5 %), while
/// /health stays fine: a release only traffic analysis can catch.
pub const APP_5_PERCENT_500: &str = r#"
import itertools, os
RELEASE = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "RELEASE")).read().strip()
_n = itertools.count(1)
def application(environ, start_response):
    if environ.get("PATH_INFO") != "/health" and next(_n) % 20 == 0:
        start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
        return [b"boom\n"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"release={RELEASE}\n".encode()]
"#;

/// Writes `bytes` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, bytes).with_context(|| format!("write {}", p.display()))?;
    Ok(p)
}

/// An app spec for a sample app.
pub fn spec(name: &str, server: &str, port: u16, extra: &str) -> String {
    let entry = if server == "uvicorn" {
        "app:app"
    } else {
        "app:application"
    };
    format!(
        "name = \"{name}\"\nserver = \"{server}\"\nentry = \"{entry}\"\nlisten = \"0.0.0.0:{port}\"\nworkers = 2\nhealth = {{ path = \"/health\", timeout = \"2s\", interval = \"500ms\", failures = 2 }}\n{extra}"
    )
}
